"""The files the stages hand each other, read with their schema checked row by row: questions in
Dolly's schema (the source and prepare's splits) and generate's dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, get_args

from genz_speak.config import DollyCategory
from genz_speak.errors import InputError
from genz_speak.io import read_jsonl

DOLLY_FIELDS = ("instruction", "context", "response", "category")
DOLLY_CATEGORIES = frozenset(get_args(DollyCategory))  # one list: params' prepare.categories too


def row_id(row: dict[str, Any]) -> str:
    """A stable id from the question's content, so ids survive reordering of the source."""
    key = "\x1f".join((row["instruction"].strip(), row["context"].strip()))
    return "q-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def validate_row(r: dict[str, Any]) -> dict[str, Any]:
    """One row in Dolly's schema, stripped and with its id; InputError (without a location) otherwise."""
    bad = [f for f in DOLLY_FIELDS if r.get(f) is not None and not isinstance(r[f], str)]
    if bad:
        raise InputError(f"field(s) {bad} must be strings")
    # Stripped before the emptiness check: str.strip() removes NBSP and the other Unicode spaces too.
    row = {f: (r.get(f) or "").strip() for f in DOLLY_FIELDS}
    missing = [f for f in ("instruction", "response", "category") if not row[f]]
    if missing:
        raise InputError(f"missing or empty field(s) {missing}; Dolly rows need {DOLLY_FIELDS}")
    if row["category"] not in DOLLY_CATEGORIES:
        raise InputError(f"unknown category {r['category']!r}; expected one of {sorted(DOLLY_CATEGORIES)}")
    row["id"] = row_id(row)
    return row


DATASET_FIELDS = ("id", "split", "category", "instruction", "context", "source_response", "output")
SPLITS = ("train", "validation", "heldout")


def dataset_row(source: dict[str, Any], split: str, output: str) -> dict[str, Any]:
    """The dataset row (DATASET_FIELDS) for a prepared source row and its rewrite."""
    return {
        "id": source["id"],
        "split": split,
        "category": source["category"],
        "instruction": source["instruction"],
        "context": source["context"],
        "source_response": source["response"],
        "output": output,
    }


def _dataset_row(row: dict[str, Any]) -> dict[str, Any]:
    missing = [f for f in DATASET_FIELDS if f not in row]
    if missing:
        raise InputError(f"missing field(s) {missing}; dataset rows need {DATASET_FIELDS}")
    bad = [f for f in DATASET_FIELDS if not isinstance(row[f], str)]
    if bad:
        raise InputError(f"field(s) {bad} must be strings")
    if row["split"] not in SPLITS:
        raise InputError(f"split {row['split']!r} is not one of {SPLITS}")
    if not row["output"].strip():
        raise InputError("empty output")
    return row


def read_dataset(path: Path) -> list[dict[str, Any]]:
    """genz_dataset.jsonl: rows with DATASET_FIELDS, unique ids, at least one row."""
    return read_jsonl(path, allow_empty=False, unique="id", check=_dataset_row)


def read_split(path: Path) -> list[dict[str, Any]]:
    """A prepared split (prepare's train/validation/heldout.jsonl): Dolly rows with unique ids."""
    return read_jsonl(path, unique="id", check=validate_row)
