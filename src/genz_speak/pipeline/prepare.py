"""prepare: source questions -> train / validation / held-out splits, and the base model as a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genz_speak.base_model import load_base_model, save_base_model
from genz_speak.config import PrepareConfig
from genz_speak.data.dataset import SPLITS
from genz_speak.data.questions import load_source, split_rows
from genz_speak.io import SkipBudget, write_jsonl


@dataclass(frozen=True)
class Paths:
    data_dir: Path  # {train,validation,heldout}.jsonl
    model_dir: Path  # the base model (safetensors, tokenizer, chat template)


def run(cfg: PrepareConfig, paths: Paths) -> dict[str, Any]:
    """Split the source and write the base model; row counts, drops and the base model are the metrics.
    Everything is checked (the rows, the base model and its chat template) before anything is written."""
    budget = SkipBudget(cfg.max_bad_rows)
    split = split_rows(load_source(cfg, budget), cfg)
    base = load_base_model(cfg.base_model, cfg.base_dtype, cfg.chat_template)
    for name in SPLITS:
        write_jsonl(paths.data_dir / f"{name}.jsonl", getattr(split, name))
    save_base_model(base, paths.model_dir)
    return {
        "rows": {name: len(getattr(split, name)) for name in SPLITS},
        "dropped": {**split.dropped, "bad": len(budget.skipped)},
        "base_model": base.info,
    }
