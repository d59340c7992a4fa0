"""The fault matrix: every way `genz-speak serve --faults` misbehaves (as real servers and proxies do), at
the openai teacher (the generate stage's engine) and at the LLM judge, each twice:

- retried: every row's or question's first request gets the fault; each completes on its retry;
- failing: every third row or question gets the fault on every try; it is recorded as failed, with the
  reason, and the rest complete.

Nothing raises, and the client's counts (requests, faults by name) equal what the server saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genz_speak.config import GenerateConfig, LLMJudgeConfig
from genz_speak.data.questions import validate_rows
from genz_speak.io import read_jsonl
from genz_speak.judges.llm import LLMJudge
from genz_speak.pipeline.generate import rewrite_splits
from genz_speak.teachers import build_teacher
from genz_speak.testing.faults import FAULTS
from tests.conftest import FAULT_LABELS, ROOT, TEACHER_FAULTS, served, server_stats

pytestmark = pytest.mark.slow

N = 6  # rows / questions per case
RETRIES = 2
RETRY_AFTER = 2.0
MODES = {"retried": ("--fault-first", "1"), "failing": ("--fault-first", "99", "--fault-every", "3")}
FAILING = 2  # of N: every third conversation, counted by first arrival


def server_options(kind: str, mode: str) -> tuple[str, ...]:
    return (*MODES[mode], "--faults", kind, "--stall", "6", "--retry-after", f"{RETRY_AFTER:g}")


def timeout(kind: str) -> float:
    return 2.0 if kind == "stall" else 15.0  # a stall outlasts the client's timeout; nothing else does


def reason_for(kind: str) -> str:
    """What the recorded error of a row that kept getting `kind` says."""
    label = FAULT_LABELS[kind]
    return f"Error code: {label.removeprefix('HTTP ')}" if label.startswith("HTTP ") else f"{label}: "


def expected(mode: str) -> tuple[int, int, int]:
    """(requests, faults, failed) for N conversations: retried, each fault once; failing, FAILING of
    them on the first try and every retry."""
    if mode == "retried":
        return 2 * N, N, 0
    return N - FAILING + FAILING * (RETRIES + 1), FAILING * (RETRIES + 1), FAILING


def report(side: str, kind: str, mode: str, stats: dict[str, int], done: int, failed: list[str]) -> None:
    # One line per case, for the closing note's table (pytest -s shows them).
    why = failed[0][:70] if failed else ""
    print(
        f"\nMATRIX|{side}|{kind}|{mode}|{stats['requests']}|{stats.get(kind, 0)}|{done}|{len(failed)}|{why}"
    )


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", TEACHER_FAULTS)
def test_teacher(kind: str, mode: str, tmp_path: Path) -> None:
    rows = validate_rows(read_jsonl(ROOT / "data/questions.jsonl")[:N], "questions")
    with served("rules", *server_options(kind, mode)) as url:
        cfg = GenerateConfig(
            teacher="openai",
            model="rules",
            base_url=url,
            concurrency=4,
            request_timeout=timeout(kind),
            max_retries=RETRIES,
        )
        m: dict[str, Any] = rewrite_splits(
            cfg, {"train": rows}, build_teacher(cfg), tmp_path, tmp_path / "cache.jsonl"
        )
        stats = server_stats(url)
    rejects = read_jsonl(tmp_path / "rejects.jsonl")
    requests, faults, failed = expected(mode)
    report("teacher", kind, mode, stats, m["rows"], [r["reason"] for r in rejects])
    assert (m["rows"], m["teacher_failures"], len(rejects)) == (N - failed, failed, failed)
    assert all(r["reason"].startswith("teacher: ") and reason_for(kind) in r["reason"] for r in rejects)
    assert stats[kind] == faults and m["faults"] == {FAULT_LABELS[kind]: faults}
    assert m["requests"] == stats["requests"] == requests
    assert m["retries"] == requests - N
    if kind == "429":
        assert m["wall_s"] >= RETRY_AFTER  # the retry waited for Retry-After, not the shorter backoff


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", FAULTS)
def test_judge(kind: str, mode: str, tmp_path: Path) -> None:
    items = [
        (f"Question {i}?", "ngl it's true fr" if i % 2 else "It is true.", "It is true.") for i in range(N)
    ]
    with served("judge", *server_options(kind, mode)) as url:
        cfg = LLMJudgeConfig(
            model="judge", base_url=url, concurrency=4, request_timeout=timeout(kind), max_retries=RETRIES
        )
        judge = LLMJudge(cfg, tmp_path / "judge.jsonl")
        verdicts = judge.judge(items)
        judge.close()
        stats = server_stats(url)
    requests, faults, failed = expected(mode)
    errors = [v.error or "" for v in verdicts if v.scores is None]
    report("judge", kind, mode, stats, N - len(errors), errors)
    assert len(errors) == failed and all(reason_for(kind) in e for e in errors), errors
    done = [v for v in verdicts if v.scores is not None]
    assert all(v.scores["helpfulness"] == 0.6 and v.scores["coherence"] == 0.7 for v in done)
    assert stats[kind] == faults and dict(judge.faults) == {FAULT_LABELS[kind]: faults}
    assert judge.requests == stats["requests"] == requests
