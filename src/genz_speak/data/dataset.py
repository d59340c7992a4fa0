"""The files the stages hand each other, read with their schema checked row by row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genz_speak.data.questions import validate_row
from genz_speak.errors import InputError
from genz_speak.io import read_jsonl

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
