"""The hand-written Gen Z corpus (`data/genz_corpus.jsonl`): a natural rewrite of each shipped question's
reference answer, keyed by the question's id (docs/genz_writing_guide.md says how it is written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genz_speak.errors import InputError
from genz_speak.io import read_jsonl

CORPUS_FIELDS = ("id", "category", "instruction", "reference", "genz", "register")
REGISTERS = ("light", "medium", "heavy")


def _corpus_row(row: dict[str, Any]) -> dict[str, Any]:
    if set(row) != set(CORPUS_FIELDS):
        raise InputError(f"fields {sorted(row)}; corpus rows have exactly {CORPUS_FIELDS}")
    bad = [f for f in CORPUS_FIELDS if not isinstance(row[f], str) or not row[f].strip()]
    if bad:
        raise InputError(f"field(s) {bad} must be non-empty strings")
    if row["register"] not in REGISTERS:
        raise InputError(f"register {row['register']!r} is not one of {REGISTERS}")
    if row["genz"].strip() == row["reference"].strip():
        raise InputError("the rewrite is identical to its reference")
    return row


def read_corpus(path: Path) -> list[dict[str, Any]]:
    """The corpus, every row checked; ids are unique (errors name the file and line)."""
    return read_jsonl(path, allow_empty=False, unique="id", check=_corpus_row)
