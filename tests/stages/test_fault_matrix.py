"""The fault matrix: every way `genz-speak serve --faults` misbehaves (as real servers and proxies do), at
the openai teacher (the generate stage's engine) and at the LLM judge.

Faults the clients retry (429s whatever their Retry-After, 5xx, stalls, bodies that are not completions,
dropped connections; for the judge, replies that are not a verdict) run twice:

- retried: every row's or question's first request gets the fault; each completes on its retry;
- failing: every third row or question gets the fault on every try; it is recorded as failed, with the
  reason, and the rest complete.

Nothing raises, and the client's counts (requests, faults by name) equal what the server saw. Replies
that are answers but not usable ones (reasoning blocks, cut-off replies, JSON, unrelated text, a lone
surrogate) and refusals (a 401 quoting the key, a 400 to response_format) each get their own case. Each
case prints a MATRIX line: `pytest -s` shows the table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from genz_speak.cache import read_jsonl_tolerant
from genz_speak.config import GenerateConfig, LLMJudgeConfig
from genz_speak.data.questions import validate_rows
from genz_speak.errors import StageFailed
from genz_speak.io import free_port, read_jsonl
from genz_speak.judges.llm import LLMJudge
from genz_speak.llm_client import complete, describe, make_client
from genz_speak.pipeline.generate import rewrite_splits
from genz_speak.teachers import build_teacher
from tests.conftest import FAULT_LABELS, ROOT, TEACHER_FAULTS, served, server_stats

pytestmark = pytest.mark.slow

N = 6  # rows / questions per case
RETRIES = 2
RETRY_AFTER = 2.0
MODES = {"retried": ("--fault-first", "1"), "failing": ("--fault-first", "99", "--fault-every", "3")}
FAILING = 2  # of N: every third conversation, counted by first arrival
ROWS = validate_rows(read_jsonl(ROOT / "data/questions.jsonl")[:N], "questions")
ITEMS = [(f"Question {i}?", "ngl it's true fr" if i % 2 else "It is true.", "It is true.") for i in range(N)]
KEY = "sk-matrix-0123456789abcdef"  # the client's key, which a 401-echo server quotes back


def server_options(kind: str, mode: str) -> tuple[str, ...]:
    return (*MODES[mode], "--faults", kind, "--stall", "6", "--retry-after", f"{RETRY_AFTER:g}")


def timeout(kind: str) -> float:
    return 2.0 if kind == "stall" else 15.0  # a stall outlasts the client's timeout; nothing else does


def reason_for(kind: str) -> str:
    """What the recorded error of a row that kept getting `kind` says: the HTTP status with the server's
    own message ("RateLimitError 429: rate limited"), or the error's class."""
    label = FAULT_LABELS[kind]
    return f" {label.removeprefix('HTTP ')}: " if label.startswith("HTTP ") else f"{label}: "


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


def teacher_cfg(url: str, kind: str = "", **overrides: Any) -> GenerateConfig:
    settings: dict[str, Any] = {
        "teacher": "openai",
        "model": "rules",
        "base_url": url,
        "concurrency": 4,
        "request_timeout": timeout(kind),
        "max_retries": RETRIES,
        **overrides,
    }
    return GenerateConfig(**settings)


def generate(cfg: GenerateConfig, out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    m = rewrite_splits(cfg, {"train": ROWS}, build_teacher(cfg), out, out / "cache.jsonl")
    return m, read_jsonl(out / "rejects.jsonl")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", TEACHER_FAULTS)
def test_teacher(kind: str, mode: str, tmp_path: Path) -> None:
    with served("rules", *server_options(kind, mode)) as url:
        start = time.monotonic()
        m, rejects = generate(teacher_cfg(url, kind), tmp_path)
        wall = time.monotonic() - start
        stats = server_stats(url)
    run = m["run"]
    requests, faults, failed = expected(mode)
    report("teacher", kind, mode, stats, m["rows"], [r["reason"] for r in rejects])
    assert (m["rows"], run["teacher_failures"], len(rejects)) == (N - failed, failed, failed)
    assert all(r["reason"].startswith("teacher: ") and reason_for(kind) in r["reason"] for r in rejects)
    assert stats[kind] == faults and run["faults"] == {FAULT_LABELS[kind]: faults}
    assert run["requests"] == stats["requests"] == requests
    assert run["retries"] == requests - N
    if kind in ("429", "429-date") and mode == "retried":
        # The retry waited for Retry-After (a date has whole seconds), not the shorter backoff.
        assert wall >= RETRY_AFTER - 1


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", list(FAULT_LABELS))
def test_judge(kind: str, mode: str, tmp_path: Path) -> None:
    with served("judge", *server_options(kind, mode)) as url:
        cfg = LLMJudgeConfig(
            model="judge", base_url=url, concurrency=4, request_timeout=timeout(kind), max_retries=RETRIES
        )
        judge = LLMJudge(cfg, tmp_path / "judge.jsonl")
        verdicts = judge.judge(ITEMS)
        judge.close()
        stats = server_stats(url)
    requests, faults, failed = expected(mode)
    errors = [v.error or "" for v in verdicts if v.scores is None]
    report("judge", kind, mode, stats, N - len(errors), errors)
    assert len(errors) == failed and all(reason_for(kind) in e for e in errors), errors
    done = [v for v in verdicts if v.scores is not None]
    assert all(v.scores["helpfulness"] == 0.6 and v.scores["coherence"] == 0.7 for v in done)
    assert stats[kind] == faults and dict(judge.faults) == {FAULT_LABELS[kind]: faults}
    assert judge.requests == stats["requests"] == judge.usage()["requests"] == requests


# Replies the teacher's validation rejects (not retried: the server did answer), with the reason it gives.
REJECTED = {
    "length": "truncated (finish_reason: length",
    "jsonblob": "a JSON value, not a rewrite",
    "extrakeys": "a JSON value, not a rewrite",
    "badkeys": "a JSON value, not a rewrite",
    "badrange": "a JSON value, not a rewrite",
    "unrelated": "not a rewrite of this answer",
    "prose": "not a rewrite of this answer",
}


@pytest.mark.parametrize("kind", list(REJECTED))
def test_teacher_rejects_replies_that_are_no_rewrite(kind: str, tmp_path: Path) -> None:
    """Issue 23, point 3: a cut-off reply, a JSON blob, an unrelated sentence became training rows."""
    with served("rules", *server_options(kind, "failing")) as url:
        m, rejects = generate(teacher_cfg(url, kind), tmp_path)
        stats = server_stats(url)
    report("teacher", kind, "failing", stats, m["rows"], [r["reason"] for r in rejects])
    assert (m["rows"], len(rejects), m["run"]["teacher_failures"]) == (N - FAILING, FAILING, 0)
    assert all(r["reason"].startswith(REJECTED[kind]) for r in rejects), rejects
    assert m["run"]["requests"] == stats["requests"] == N  # an answer is not retried
    assert m["rejected_by_reason"] == {rejects[0]["reason"].split(" (")[0]: FAILING}


@pytest.mark.parametrize("kind", ["think", "surrogate", "400-schema"])
def test_teacher_uses_replies_once_cleaned(kind: str, tmp_path: Path) -> None:
    """Issue 23, points 2 and 3: a <think> block is stripped from the rewrite; a lone surrogate (an emoji
    a proxy cut in half) and a NUL are cleaned before the reply is cached, so the row is cached and a
    rerun pays nothing (it crashed every rerun before). A teacher sends no response_format, so a server
    refusing one answers it."""
    with served("rules", *server_options(kind, "failing")) as url:
        m, rejects = generate(teacher_cfg(url, kind), tmp_path)
        again, _ = generate(teacher_cfg(url, kind), tmp_path)
        stats = server_stats(url)
    report("teacher", kind, "failing", stats, m["rows"], [r["reason"] for r in rejects])
    assert (m["rows"], rejects) == (N, [])
    assert stats["requests"] == N and again["run"]["cache_hits"] == N  # the rerun sent nothing
    outputs = [r["output"] for r in read_jsonl(tmp_path / "genz_dataset.jsonl")]
    stored = (tmp_path / "cache.jsonl").read_bytes() + (tmp_path / "genz_dataset.jsonl").read_bytes()
    assert b"\\ud83d" not in stored and b"\x00" not in stored and b"\\u0000" not in stored
    if kind == "surrogate":
        assert sum(o.endswith("\ufffd") for o in outputs) == stats["surrogate"] == FAILING
    if kind == "think":
        assert stats["think"] == FAILING and not any(
            "<think>" in o or "Keep every fact" in o for o in outputs
        )
        assert (
            sum("<think>" in r.get("output", "") for r in read_jsonl_tolerant(tmp_path / "cache.jsonl"))
            == FAILING
        )


@pytest.mark.parametrize("kind", ["think", "surrogate"])
def test_judge_uses_replies_once_cleaned(kind: str, tmp_path: Path) -> None:
    with served("judge", *server_options(kind, "failing")) as url:
        judge = LLMJudge(
            LLMJudgeConfig(model="judge", base_url=url, max_retries=RETRIES), tmp_path / "j.jsonl"
        )
        verdicts = judge.judge(ITEMS)
        judge.close()
        stats = server_stats(url)
    report("judge", kind, "failing", stats, sum(v.scores is not None for v in verdicts), [])
    assert [v.error for v in verdicts] == [None] * N and stats[kind] == FAILING
    assert stats["requests"] == judge.requests == N
    if kind == "surrogate":
        assert sum(v.rationale.endswith("\ufffd") for v in verdicts) == FAILING
        assert b"\\ud83d" not in (tmp_path / "j.jsonl").read_bytes()


@pytest.mark.parametrize("side", ["teacher", "judge"])
def test_a_401_that_quotes_the_key_stores_no_key(
    side: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 23, point 4: a 401 body that echoes the key landed in the cache, the log and scores.jsonl.
    Every stored or logged error text is scrubbed of the key in use; the server's message is kept."""
    monkeypatch.setenv("GENZ_MATRIX_KEY", KEY)
    with served("rules" if side == "teacher" else "judge", *server_options("401-echo", "failing")) as url:
        if side == "teacher":
            m, rejects = generate(teacher_cfg(url, api_key_env="GENZ_MATRIX_KEY"), tmp_path)
            errors, done = [r["reason"] for r in rejects], m["rows"]
            stored = [tmp_path / "cache.jsonl", tmp_path / "rejects.jsonl"]
        else:
            cfg = LLMJudgeConfig(
                model="judge", base_url=url, api_key_env="GENZ_MATRIX_KEY", max_retries=RETRIES
            )
            judge = LLMJudge(cfg, tmp_path / "j.jsonl")
            verdicts = judge.judge(ITEMS)
            errors, done = (
                [v.error or "" for v in verdicts if v.error],
                sum(v.error is None for v in verdicts),
            )
            stored = [tmp_path / "j.jsonl"]
        stats = server_stats(url)
    report(side, "401-echo", "failing", stats, done, errors)
    assert len(errors) == FAILING and stats["requests"] == N  # a 401 is not retried
    assert all("AuthenticationError 401: Incorrect API key provided: ***" in e for e in errors), errors
    texts = [p.read_text() for p in stored] + [caplog.text, json.dumps(errors)]
    assert not any(KEY in t or KEY[:12] in t for t in texts)


def test_a_judge_server_that_refuses_response_format_is_asked_without_it(tmp_path: Path) -> None:
    """Issue 23, point 8: vLLM's 400 to response_format failed every judgement ("BadRequestError 400:
    Error code: 400"). Now the request is sent again without it, for the rest of the run, and the
    verdicts are parsed as strictly as ever."""
    record = tmp_path / "requests.jsonl"
    with served("judge", "--fault-every", "1", "--faults", "400-schema", "--record", str(record)) as url:
        judge = LLMJudge(
            LLMJudgeConfig(model="judge", base_url=url, max_retries=RETRIES), tmp_path / "j.jsonl"
        )
        verdicts = judge.judge(ITEMS)
        stats = server_stats(url)
    report("judge", "400-schema", "every", stats, sum(v.error is None for v in verdicts), [])
    assert [v.error for v in verdicts] == [None] * N and not judge.use_schema
    refused = stats["400-schema"]
    assert 1 <= refused <= 4 and stats["requests"] == judge.requests == N + refused  # 4: the concurrency
    assert dict(judge.faults) == {"HTTP 400": refused}
    sent = read_jsonl(record)
    assert sum("response_format" in r for r in sent) == refused


def test_a_4xx_error_keeps_the_servers_message() -> None:
    """Issue 23, point 8: the recorded error is the server's own message whatever its error body's shape
    (vLLM's top-level "message", FastAPI's "detail"), not the client's bare "Error code: 400"."""
    with served("judge", "--fault-every", "1", "--faults", "400-schema") as url:
        client = make_client(url, "NO_KEY_HERE", 10.0)
        errors = []
        for request in (
            {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
            {"messages": []},
        ):
            with pytest.raises(openai.BadRequestError) as err:
                complete(client, model="judge", **request)
            errors.append(describe(err.value))
    assert errors == [
        "BadRequestError 400: response_format json_schema is not supported by this server (injected)",
        "BadRequestError 400: messages must not be empty",
    ]


@pytest.mark.parametrize("side", ["teacher", "judge"])
def test_a_dead_endpoint_is_one_line_before_any_row(side: str, tmp_path: Path) -> None:
    """Issue 23, point 7: nothing listening took 483 s of retries for 209 rows. The pre-flight request
    fails in a second or two, naming the endpoint."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(StageFailed, match=rf"cannot reach {url}: APIConnectionError") as err:
        if side == "teacher":
            build_teacher(teacher_cfg(url))
        else:
            LLMJudge(LLMJudgeConfig(model="judge", base_url=url), tmp_path / "j.jsonl")
    wall = time.monotonic() - start
    print(f"\nMATRIX|{side}|dead endpoint|pre-flight|0|-|0|all|{str(err.value)[:70]} ({wall:.1f} s)")
    assert wall < 10


@pytest.mark.parametrize("side", ["teacher", "judge"])
def test_every_request_failing_the_same_way_stops_early(side: str, tmp_path: Path) -> None:
    """Issue 23, point 7: a server that answers /models but fails every chat request: the run stops once
    the first max(8, 2 x concurrency) items all failed with the same error, rather than after every
    row's retries."""
    rows = validate_rows(read_jsonl(ROOT / "data/questions.jsonl")[:40], "questions")
    with served("rules" if side == "teacher" else "judge", "--fault-every", "1", "--faults", "500") as url:
        with pytest.raises(
            StageFailed, match=r"the first \d+ (rows|judgements) all failed .* InternalServerError 500"
        ):
            if side == "teacher":
                cfg = teacher_cfg(url, concurrency=2, max_retries=1)
                rewrite_splits(cfg, {"train": rows}, build_teacher(cfg), tmp_path, tmp_path / "cache.jsonl")
            else:
                cfg = LLMJudgeConfig(model="judge", base_url=url, concurrency=2, max_retries=1)
                LLMJudge(cfg, tmp_path / "j.jsonl").judge([(r["instruction"], "x", "y") for r in rows])
        stats = server_stats(url)
    print(f"\nMATRIX|{side}|500 on every request|early stop|{stats['requests']}|{stats['500']}|0|stopped|")
    assert stats["requests"] < 2 * len(rows) / 2  # at most the window and those in flight, of 80 tries
