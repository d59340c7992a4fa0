"""CUDA-only checks (gpu marker, skipped on CPU machines): Unsloth's batches and the vllm teacher."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from genz_speak.config import GenerateConfig, SamplingConfig, TrainConfig
from genz_speak.data.chat import prompt_completion
from genz_speak.data.questions import validate_rows
from genz_speak.io import read_jsonl
from tests.conftest import ROOT

pytestmark = pytest.mark.gpu


def _rows(n: int) -> list[dict[str, Any]]:
    rows = validate_rows(read_jsonl(ROOT / "data/questions.jsonl")[:n], "questions")
    return [{**r, "output": r["response"]} for r in rows]


def _one_batch_loss(model_dir: Path, work: Path, **fields: Any) -> float:
    """Loss of one batch holding all 8 rows (so row order cannot matter), through the trainer's collator."""
    import torch
    from datasets import Dataset

    from genz_speak.training import backends
    from genz_speak.training.sft import build_trainer

    cfg = replace(TrainConfig(), backend="unsloth", load_in_4bit=True, batch_size=8, max_steps=1, **fields)
    prepared = backends.load("unsloth", model_dir, cfg)
    data = Dataset.from_list([prompt_completion(r) for r in _rows(8)])
    trainer, _, _ = build_trainer(cfg, "unsloth", prepared, data, None, work, [])
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        return float(model(**{k: v.to(model.device) for k, v in batch.items()}).loss)


def test_unsloth_padding_free_batches_match_padded(tiny_model: Path, tmp_path: Path) -> None:
    """Rows concatenated without padding must not attend to each other: same loss as the padded batch."""
    if importlib.util.find_spec("unsloth") is None:  # not importorskip: the import must come after
        pytest.skip("unsloth is not installed")  # backends.load_unsloth's preparation
    padded = _one_batch_loss(tiny_model, tmp_path / "padded", padding_free=False)
    padding_free = _one_batch_loss(tiny_model, tmp_path / "free", padding_free=True)
    assert padding_free == pytest.approx(padded, rel=2e-2), (padded, padding_free)


def test_vllm_teacher_through_the_generate_stage(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from genz_speak.pipeline.generate import rewrite_splits
    from genz_speak.teachers import build_teacher

    cfg = GenerateConfig(
        teacher="vllm",
        model=str(tiny_model),
        sampling=SamplingConfig(max_new_tokens=16),
        max_reject_fraction=1.0,
    )
    cfg = replace(cfg, vllm=replace(cfg.vllm, enforce_eager=True, gpu_memory_utilization=0.3))
    rows = _rows(6)
    out, cache = tmp_path / "out", tmp_path / "cache.jsonl"
    metrics = rewrite_splits(cfg, {"train": rows}, build_teacher(cfg), out, cache)
    assert metrics["teacher_calls"] == 6 and metrics["tokens_out"] > 0
    cached = read_jsonl(cache)
    assert sorted(r["id"] for r in cached) == sorted(r["id"] for r in rows)
