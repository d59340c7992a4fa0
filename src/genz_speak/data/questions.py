"""Load source questions (Dolly schema) from a local JSONL/Parquet file or a hub dataset, and split them."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genz_speak.config import PrepareConfig
from genz_speak.data.dataset import validate_row
from genz_speak.errors import InputError, MissingInput, ParamError
from genz_speak.io import SkipBudget, read_jsonl

log = logging.getLogger(__name__)


def validate_rows(
    raw: list[dict[str, Any]], origin: str, budget: SkipBudget | None = None
) -> list[dict[str, Any]]:
    """`validate_row` over rows that have no lines (Parquet, the hub); errors name the 1-based row."""
    rows = []
    for i, r in enumerate(raw, start=1):
        try:
            rows.append(validate_row(r))
        except InputError as err:
            (budget or SkipBudget()).absorb(InputError(f"{origin}:{i}: {err}"))
    return rows


def load_source(cfg: PrepareConfig, budget: SkipBudget | None = None) -> list[dict[str, Any]]:
    """Read the configured source into validated rows with ids; up to `prepare.max_bad_rows` bad rows are
    skipped and recorded in `budget` (pass one to report them)."""
    src = cfg.source
    budget = budget or SkipBudget(cfg.max_bad_rows)
    path = Path(src.path)
    if src.kind == "hub":
        # Imported here: `datasets` is heavy and only this path needs it (and a network).
        from datasets import load_dataset

        log.info("loading %s (split %s) from the hub", src.dataset, src.split)
        raw = [dict(r) for r in load_dataset(src.dataset, split=src.split)]
        origin = f"{src.dataset}[{src.split}]"
        rows = validate_rows(raw, origin, budget)
    elif path.suffix == ".parquet":
        import pandas as pd

        if not path.is_file():
            raise MissingInput(f"{path}: file not found ({ParamError.file}: prepare.source.path)")
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow's errors have no common base worth naming
            raise InputError(f"{path}: not a readable Parquet file: {err}") from None
        # Parquet nulls arrive as NaN or None: make them None, so they read as missing, not as non-strings.
        raw = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        origin = str(path)
        rows = validate_rows(raw, origin, budget)
    elif path.suffix in (".jsonl", ".json"):
        origin = str(path)
        rows = read_jsonl(path, check=validate_row, budget=budget)
    else:
        raise ParamError("prepare.source.path", f"{path} must be a .jsonl or .parquet file")
    if not rows:
        raise InputError(f"{origin}: no usable rows")
    for message in budget.skipped:
        log.warning("skipped (prepare.max_bad_rows = %d): %s", budget.limit, message)
    return rows


@dataclass(frozen=True)
class Split:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    dropped: dict[str, int]


def split_rows(rows: list[dict[str, Any]], cfg: PrepareConfig) -> Split:
    """Filter, de-duplicate and split deterministically by `cfg.seed`.

    The held-out evaluation questions are drawn first, stratified round-robin over categories so the 10
    questions cover the task types; duplicates of an instruction never straddle two splits.
    """
    dropped = {"category": 0, "too_long": 0, "duplicate": 0}
    seen: set[str] = set()
    kept = []
    for r in rows:
        if cfg.categories and r["category"] not in cfg.categories:
            dropped["category"] += 1
        elif len(r["instruction"]) + len(r["context"]) + len(r["response"]) > cfg.max_chars:
            dropped["too_long"] += 1
        elif r["id"] in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(r["id"])
            kept.append(r)
    needed = cfg.heldout_size + cfg.validation_size + 1
    if len(kept) < needed:
        raise InputError(
            f"only {len(kept)} usable rows after filtering; prepare.heldout_size + prepare.validation_size "
            f"+ 1 = {needed} are needed"
        )
    kept.sort(key=lambda r: r["id"])  # order-independent: the split depends on content and seed only
    rng = random.Random(cfg.seed)
    rng.shuffle(kept)

    by_cat: dict[str, list[dict[str, Any]]] = {}
    for r in kept:
        by_cat.setdefault(r["category"], []).append(r)
    heldout: list[dict[str, Any]] = []
    cats = sorted(by_cat)
    while len(heldout) < cfg.heldout_size:
        for c in cats:
            if by_cat[c] and len(heldout) < cfg.heldout_size:
                heldout.append(by_cat[c].pop())
    held_ids = {r["id"] for r in heldout}
    rest = [r for r in kept if r["id"] not in held_ids]
    validation = rest[: cfg.validation_size]
    train = rest[cfg.validation_size :]
    if cfg.max_train_rows is not None:
        train = train[: cfg.max_train_rows]
    return Split(train=train, validation=validation, heldout=heldout, dropped=dropped)
