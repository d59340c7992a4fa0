"""The five student families under Unsloth on CUDA (gpu marker; skipped without CUDA or unsloth).

The GPU counterpart of tests/stages/test_families.py: the same tiny random models (`genz_speak.testing.tiny`),
here with the `gpu-embedded` profile's training (train.backend: unsloth, 4-bit QLoRA, bfd packing, so the
packed rows run Unsloth's varlen path, adamw_8bit) and its float16 base, so that merge takes Unsloth's merged
save; then evaluate's answers and the export to GGUF, checked by llama.cpp where llama_cpp is importable,
else by transformers. A second test per family holds Unsloth's packed rows to the same rows run alone
(tests/gpu/test_packed_isolation.py's check, on the family's vocabulary): Gemma 3's sliding window (8
tokens here, shorter than a row) and Qwen3's q/k norms are where Unsloth's kernels differ from Llama's.
Every figure is printed (`FAMILY ...` lines) and recorded as a junit property.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from genz_speak.config import Params
from genz_speak.data.dataset import read_split
from genz_speak.io import write_json
from genz_speak.params import parse
from genz_speak.testing.tiny import FAMILIES
from tests.gpu import test_packed_isolation as isolation
from tests.stages.test_families import END_OF_TURN, TOKENIZER_PRE, family_params
from tests.stages.test_families import generated as generated  # the fixture: prepared and generated data

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _unsloth() -> None:
    if importlib.util.find_spec("unsloth") is None:  # not importorskip: importing it now is too early
        pytest.skip("unsloth is not installed")


def gpu_params(model: Path, name: str) -> dict[str, Any]:
    """The CPU family params with configs/gpu-embedded.yaml's training: Unsloth, 4-bit, bfd packing (one
    packed 256-token sequence a step, two or three rows in it), a float16 base for Unsloth's merged save."""
    p = family_params(model, name)
    p["prepare"]["base_dtype"] = "float16"
    p["train"].update(
        backend="unsloth",
        load_in_4bit=True,
        packing=True,
        packing_strategy="bfd",
        batch_size=1,
        gradient_accumulation_steps=1,
        max_steps=3,
        optimizer="adamw_8bit",
    )
    p["merge"]["backend"] = "auto"
    return p


def _timed(seconds: dict[str, float], stage: str, engine: Any, cfg: Any, paths: Any) -> dict[str, Any]:
    start = time.monotonic()
    metrics = engine(cfg, paths)
    seconds[stage] = round(time.monotonic() - start, 1)
    return metrics


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(
    request: pytest.FixtureRequest,
    families: dict[str, Path],
    generated: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Path, dict[str, dict[str, Any]], dict[str, float]]:
    """One family through prepare -> train -> merge -> answers -> export, as dvc.yaml chains them."""
    from genz_speak.config import DecodingConfig
    from genz_speak.generation import answer_questions
    from genz_speak.pipeline import export, merge, prepare, train

    name = request.param
    root = tmp_path_factory.mktemp(f"{name}-unsloth")
    (root / "params.yaml").write_text(yaml.safe_dump(gpu_params(families[name], name)))
    shutil.copytree(generated / "data", root / "data")
    shutil.copytree(generated / "metrics", root / "metrics")
    params = parse(Params, yaml.safe_load((root / "params.yaml").read_text()))
    base, adapter, merged = root / "models/prepare", root / "models/train", root / "models/merge"
    heldout = root / "data/prepare/heldout.jsonl"
    metrics: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    metrics["prepare"] = _timed(
        seconds, "prepare", prepare.run, params.prepare, prepare.Paths(root / "data/prepare", base)
    )
    paths = train.Paths(
        root / "data/generate/genz_dataset.jsonl", base, adapter, root / "dvclive/train", root / ".cache/t"
    )
    metrics["train"] = _timed(seconds, "train", train.run, params.train, paths)
    metrics["merge"] = _timed(
        seconds, "merge", merge.run, params.merge, merge.Paths(base, adapter, heldout, merged)
    )
    for stage in ("prepare", "train", "merge"):
        write_json(root / f"metrics/{stage}.json", metrics[stage])
    start = time.monotonic()
    answers = answer_questions(
        merged, read_split(heldout)[:4], root / "answers.jsonl",
        decoding=DecodingConfig(max_new_tokens=8, repetition_penalty=1.2), batch_size=4,
    )  # fmt: skip
    seconds["answers"] = round(time.monotonic() - start, 1)
    metrics["answers"] = {"n": len(answers), "all_text": all(isinstance(a.text, str) for a in answers)}
    run_metrics = [root / f"metrics/{s}.json" for s in ("prepare", "generate", "train", "merge")]
    export_paths = export.Paths(merged, heldout, root / "models/export", run_metrics, root / "params.yaml")
    metrics["export"] = _timed(seconds, "export", export.run, params.export, export_paths)
    return name, root, metrics, seconds


def test_family_trains_packed_under_unsloth_merges_and_exports(
    family_run: tuple[str, Path, dict[str, dict[str, Any]], dict[str, float]],
    record_property: Callable[[str, Any], None],
) -> None:
    name, root, metrics, seconds = family_run
    t, m, e = metrics["train"], metrics["merge"], metrics["export"]
    figures = {
        "family": name,
        "seconds": seconds,
        "train_backend": t["backend"],
        "packing": t["packing"],
        "padding_free": t["padding_free"],
        "attention_kernel": t["attention_kernel"],
        "steps": t["steps"],
        "final_loss": t.get("final_loss"),
        "merge_backend": m.get("backend"),
        "merge_max_logit_diff": m.get("max_logit_diff"),
        "merge_tolerance": m.get("tolerance"),
        "merge_adapter_effect": m.get("adapter_effect"),
        "export": {
            fmt: {
                k: r.get(k)
                for k in ("check", "max_logit_diff", "tolerance", "top1_agreement", "next_token_agreement")
            }
            | {"tokenizer_problems": len(r.get("tokenizer_problems", []))}
            for fmt, r in e["formats"].items()
        },
        "tokenizer_pre": e["converter"].get("tokenizer_pre"),
    }
    for key, value in figures.items():
        record_property(key, json.dumps(value) if isinstance(value, dict) else value)
    print(f"FAMILY {json.dumps(figures)}")
    assert t["backend"] == "unsloth" and t["packing"] == "bfd" and t["padding_free"], figures
    assert "varlen" in t["attention_kernel"], figures  # Unsloth's packed path, not SDPA per sequence
    assert t["steps"] == 3 and math.isfinite(t["final_loss"]), figures
    assert m["passed"] and m["max_logit_diff"] <= m["tolerance"] and m["adapter_effect"] > 0, figures
    assert metrics["answers"] == {"n": 4, "all_text": True}
    assert e["passed"] and e["converter"]["tokenizer_pre"] == TOKENIZER_PRE.get(name), figures
    for fmt, r in e["formats"].items():
        assert r["passed"] and r["tokenizer_problems"] == [], (fmt, figures)
    modelfile = (root / "models/export/Modelfile").read_text()
    assert f"PARAMETER stop {json.dumps(END_OF_TURN[name])}" in modelfile


@pytest.mark.parametrize("name", FAMILIES)
def test_family_packed_rows_are_isolated_under_unsloth(
    name: str,
    families: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, Any], None],
) -> None:
    """test_packed_isolation's check (each packed row's loss and LoRA gradient equal to the row alone) on
    the family's tiny model, its rows drawn from its own vocabulary."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(families[name]).vocab_size
    row_maker = isolation.rows

    def rows_in_vocab(n: int = 24, seed: int = 0) -> list[dict[str, list[int]]]:
        return [
            {**r, "input_ids": [10 + i % (vocab - 20) for i in r["input_ids"]]} for r in row_maker(n, seed)
        ]

    monkeypatch.setattr(isolation, "rows", rows_in_vocab)
    record_property("family", name)
    if name == "gemma3":  # the control (rows as one sequence) mixes only a window's 8 tokens at each boundary
        try:
            isolation.check_isolation("unsloth", families[name], tmp_path, record_property)
        except AssertionError as err:
            if "the control did not mix rows" not in str(err):
                raise
            print(f"FAMILY-ISOLATION {name}: control mixed too little to compare (sliding window): {err}")
    else:
        isolation.check_isolation("unsloth", families[name], tmp_path, record_property)
