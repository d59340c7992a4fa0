"""The corpus teacher (the offline default) and the few-shot prompts of the LLM teachers."""

from __future__ import annotations

from pathlib import Path

import pytest

from genz_speak.config import FewShotConfig, GenerateConfig
from genz_speak.data.corpus import read_corpus
from genz_speak.data.dataset import validate_row
from genz_speak.errors import InputError
from genz_speak.io import read_jsonl
from genz_speak.pipeline.generate import rewrite_splits
from genz_speak.teachers import build_teacher
from genz_speak.teachers.base import build_messages, pick_exemplars, rewrite_key
from tests.conftest import ROOT

CORPUS = read_corpus(ROOT / "data/genz_corpus.jsonl")
QUESTIONS = read_jsonl(ROOT / "data/questions.jsonl", check=validate_row)


def run(cfg: GenerateConfig, splits: dict, tmp: Path) -> list[dict]:
    rewrite_splits(cfg, splits, build_teacher(cfg, CORPUS), tmp, tmp / "cache.jsonl", CORPUS)
    return read_jsonl(tmp / "genz_dataset.jsonl")


def test_corpus_teacher_writes_the_hand_written_rewrites(tmp_path: Path) -> None:
    rows = run(GenerateConfig(), {"train": QUESTIONS[:30], "heldout": QUESTIONS[30:35]}, tmp_path)
    by_id = {r["id"]: r["genz"] for r in CORPUS}
    assert len(rows) == 35
    assert all(r["output"] == by_id[r["id"]] and r["teacher"] == "corpus" for r in rows)


def test_a_row_without_a_rewrite_is_an_error_or_a_marked_caricature(tmp_path: Path) -> None:
    stranger = validate_row(
        {"instruction": "Name a primary colour.", "context": "", "response": "Red is a primary colour.",
         "category": "open_qa"}
    )  # fmt: skip
    splits = {"train": [*QUESTIONS[:5], stranger]}
    with pytest.raises(
        InputError, match=r"generate.teacher: corpus has no rewrite for 1 of 6 .*corpus_missing"
    ):
        run(GenerateConfig(), splits, tmp_path / "a")
    rows = run(GenerateConfig(corpus_missing="rules"), splits, tmp_path / "b")
    marked = [r for r in rows if r["teacher"] != "corpus"]
    assert [(r["id"], r["teacher"]) for r in marked] == [(stranger["id"], "rules (caricature)")]


def test_exemplars_skip_the_row_and_held_out_questions_and_vary_by_row() -> None:
    cfg = FewShotConfig(count=4)
    row = QUESTIONS[0]
    held = frozenset(q["id"] for q in QUESTIONS[100:140])
    picked = pick_exemplars(cfg, row, CORPUS, held)
    assert len(picked) == 4 and all(p["id"] != row["id"] and p["id"] not in held for p in picked)
    assert all(p["category"] == row["category"] for p in picked)  # the category has enough rows
    assert picked == pick_exemplars(cfg, row, CORPUS, held)  # deterministic
    others = {tuple(p["id"] for p in pick_exemplars(cfg, q, CORPUS, held)) for q in QUESTIONS[1:21]}
    assert len(others) > 10
    assert pick_exemplars(FewShotConfig(count=0), row, CORPUS, held) == []


def test_the_chat_shows_exemplars_as_worked_turns_and_keys_the_cache() -> None:
    cfg = GenerateConfig(teacher="openai", model="m")
    row = QUESTIONS[0]
    exemplars = pick_exemplars(cfg.fewshot, row, CORPUS, frozenset())
    messages = build_messages(cfg, row, exemplars)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 4 + ["user"]
    assert messages[2]["content"] == exemplars[0]["genz"]
    assert row["response"] in messages[-1]["content"]
    rewrites = {r["id"]: r["genz"] for r in CORPUS}
    with_shots = rewrite_key(cfg, row, messages, rewrites)
    assert with_shots != rewrite_key(cfg, row, build_messages(cfg, row), rewrites)
