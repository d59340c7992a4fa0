"""The openai teacher through the generate stage, against `genz-speak serve` with faults injected."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from genz_speak.cache import read_jsonl_tolerant
from genz_speak.data.questions import validate_rows
from genz_speak.io import free_port, read_jsonl
from genz_speak.testing.serve import launch
from tests.conftest import (
    FAULT_LABELS,
    ROOT,
    TEACHER_FAULTS,
    python_env,
    run_stage,
    served,
    server_stats,
    stage_command,
    stage_process,
    write_prepared,
)

pytestmark = pytest.mark.slow
ROWS = 30


def start_server(model: Path, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    return launch(model, *options, env=python_env())


@pytest.fixture
def workdir(tmp_path: Path, tiny_model: Path) -> Path:
    rows = validate_rows(read_jsonl(ROOT / "data/questions.jsonl")[:ROWS], "questions")
    write_prepared(tmp_path, rows[:20], rows[20:25], rows[25:])
    return tmp_path


def write_params(workdir: Path, url: str, **generate: Any) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings: dict[str, Any] = {
        "teacher": "openai",
        "model": "tiny",
        "base_url": url,
        "api_key_env": "GENZ_TEST_KEY",
        "concurrency": 4,
        "request_timeout": 1.5,
        "max_retries": 8,
        "max_reject_fraction": 1.0,
        **generate,
    }
    params["generate"].update(settings)
    params["generate"]["sampling"].update(max_new_tokens=8)
    # The tiny random model writes noise: only the stage's bookkeeping is under test here.
    params["generate"]["validation"].update(
        min_chars=1,
        keep_numbers=False,
        keep_entities=False,
        max_echo_similarity=1.0,
        max_length_ratio=100.0,
        min_source_overlap=0.0,
        reject_truncated=False,  # 8 new tokens cut off nearly every reply
    )
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))


def test_every_row_completes_through_injected_faults(workdir: Path, tiny_model: Path) -> None:
    """Every second request gets a fault, each kind in turn. (A 200 labelled application/json whose body
    is not JSON crashed the stage with a JSONDecodeError traceback before: issue 15, defect 1.)"""
    faults = ",".join(TEACHER_FAULTS)
    with served(tiny_model, "--fault-every", "2", "--faults", faults, "--stall", "4") as url:
        write_params(workdir, url)
        proc = stage_process(workdir, "generate", env={**python_env(), "GENZ_TEST_KEY": "sk-secret-xyz"})
        stats = server_stats(url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    dataset = read_jsonl(workdir / "data/generate/genz_dataset.jsonl")
    rejects = read_jsonl(workdir / "data/generate/rejects.jsonl")
    ids = [r["id"] for r in dataset] + [r["id"] for r in rejects]
    assert len(ids) == len(set(ids)) == ROWS
    m = json.loads((workdir / "metrics/generate.json").read_text())
    assert m["rows"] == ROWS and "requests" not in m  # how the run went is in metrics/run/
    m = {**m, **json.loads((workdir / "metrics/run/generate.json").read_text())}
    assert m["teacher_failures"] == 0
    assert all(stats.get(k, 0) > 0 for k in TEACHER_FAULTS), stats
    injected: Counter[str] = Counter()
    for kind in TEACHER_FAULTS:
        injected[FAULT_LABELS[kind]] += stats.get(kind, 0)
    assert m["faults"] == dict(injected)  # each fault the server injected, counted once by its name
    assert m["retries"] == sum(injected.values())  # and each cost one retry
    assert stats["requests"] == m["requests"] == ROWS + m["retries"]
    assert m["tokens_out"] > 0
    assert "sk-secret-xyz" not in proc.stderr + proc.stdout + json.dumps(m)
    order = [
        r["id"]
        for s in ("train", "validation", "heldout")
        for r in read_jsonl(workdir / f"data/prepare/{s}.jsonl")
    ]
    kept = {r["id"] for r in dataset}
    assert [r["id"] for r in dataset] == [i for i in order if i in kept]  # deterministic: input order


def run_info(workdir: Path) -> dict[str, Any]:
    return dict(json.loads((workdir / "metrics/run/generate.json").read_text()))


def results(cache: Path) -> list[dict[str, Any]]:
    """The finished rows in a cache log (not the records of requests sent)."""
    return [r for r in read_jsonl_tolerant(cache) if "sent" not in r]


def test_killed_run_resumes_without_loss_or_duplicates(
    workdir: Path, tiny_model: Path, own_cache: Path
) -> None:
    """...and counts every request the killed run paid for, those in flight at the kill included (issue 23,
    point 14: 260 counted for 268 served)."""
    server, url = start_server(tiny_model, "--latency", "0.3")
    try:
        write_params(workdir, url, concurrency=2)
        cache = own_cache / "generate.jsonl"
        proc = subprocess.Popen(
            stage_command("generate"),
            cwd=workdir,
            env=python_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 300
        while len(results(cache)) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len(results(cache))
        assert 6 <= done_before < ROWS and not (workdir / "data/generate/genz_dataset.jsonl").exists()
        rerun = stage_process(workdir, "generate")
        served_requests = server_stats(url)["requests"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = run_info(workdir)
    assert m["cache_hits"] == done_before and m["teacher_calls"] == ROWS - done_before
    keys = [r["key"] for r in results(cache)]
    assert len(keys) == len(set(keys)) == ROWS
    assert m["requests"] == served_requests and m["runs"] == 2
    ids = [r["id"] for r in read_jsonl(workdir / "data/generate/genz_dataset.jsonl")]
    assert len(ids) + len(read_jsonl(workdir / "data/generate/rejects.jsonl")) == ROWS
    assert len(set(ids)) == len(ids)


def prior_outputs(workdir: Path) -> dict[str, bytes]:
    """A previous run's outputs, to check that a failed run leaves them as they were."""
    outputs = {
        "data/generate/genz_dataset.jsonl": b'{"id": "q-previous"}\n',
        "data/generate/rejects.jsonl": b"",
        "metrics/generate.json": b'{"rows": 1}\n',
    }
    for name, content in outputs.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_bytes(content)
    return outputs


def test_a_failed_run_replaces_no_output_and_a_rerun_counts_both_runs(workdir: Path) -> None:
    """Issue 15, defect 4: a run whose rows were all rejected wrote a 0-row dataset, rejects and metrics,
    then raised (traceback, exit 1). Now it stops with one line and leaves the outputs as they were; the
    rerun that finishes the dataset counts the faults and retries of both runs in its metrics."""
    prior = prior_outputs(workdir)
    failing = ROWS // 3  # every third row: its first 2 requests faulted
    with served("rules", "--fault-first", "2", "--fault-every", "3", "--faults", "500") as url:
        write_params(workdir, url, max_retries=1, max_reject_fraction=0.2)
        failed = stage_process(workdir, "generate")
        first = server_stats(url)
        after_failure = {name: (workdir / name).read_bytes() for name in prior}
        rerun = stage_process(workdir, "generate")
        second = server_stats(url)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    error = [line for line in failed.stderr.splitlines() if " ERROR genz_speak.stage: " in line]
    assert len(error) == 1, failed.stderr[-3000:]
    assert f"{failing}/{ROWS} rows rejected (over generate.max_reject_fraction=0.2)" in error[0]
    assert f"{failing} x teacher: InternalServerError 500: server error 500" in error[0]  # reason and count
    assert after_failure == prior
    assert first["requests"] == ROWS + failing and first["500"] == 2 * failing  # a try and a retry each

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = run_info(workdir)
    assert m["teacher_failures"] == 0 and m["runs"] == 2 and m["teacher_calls"] == failing
    assert m["faults"] == {"HTTP 500": second["500"]} == {"HTTP 500": 2 * failing}
    assert m["requests"] == second["requests"] == ROWS + 2 * failing
    assert m["retries"] == failing  # one per failing row in the failed run; none in the rerun


def test_no_usable_row_fails_whatever_the_threshold(workdir: Path) -> None:
    prior = prior_outputs(workdir)
    with served("rules", "--fault-first", "9", "--faults", "nochoices") as url:
        write_params(workdir, url, max_retries=0, max_reject_fraction=1.0)
        proc = stage_process(workdir, "generate")
    assert proc.returncode == 1, proc.stderr[-3000:]
    # Every request failing alike stops the run once max(8, 2 x concurrency) rows did (issue 23, point 7).
    assert "the first 8 rows all failed after their retries with the same error" in proc.stderr
    assert "NoContent: reply has no choices" in proc.stderr
    assert {name: (workdir / name).read_bytes() for name in prior} == prior


def test_a_stand_in_never_answers_for_the_real_server(workdir: Path, tiny_model: Path) -> None:
    """Issue 23, point 1: the cache was keyed by model name, so after a dry run against `genz-speak serve
    rules` (model gpt-5-mini), pointing base_url at the real server sent no request and labelled the
    stand-in's caricature openai:my-teacher. A cached rewrite is now reused only when the server that
    wrote it (its URL and its own description of the model) is one of this run's."""
    with served("rules", "--served-model-name", "my-teacher") as stand_in:
        write_params(workdir, stand_in, model="my-teacher")
        run_stage(workdir, "generate")
    with served("rules", "--served-model-name", "my-teacher") as real:  # another server, another URL
        write_params(workdir, real, model="my-teacher")
        run_stage(workdir, "generate")
        assert server_stats(real)["requests"] == ROWS and run_info(workdir)["cache_hits"] == 0
        run_stage(workdir, "generate")  # the same server again: everything reused
        assert server_stats(real)["requests"] == ROWS and run_info(workdir)["cache_hits"] == ROWS

    # The same URL, another server behind it (the same model name, another model).
    port = free_port()
    server, url = launch("rules", "--served-model-name", "my-teacher", env=python_env(), port=port)
    write_params(workdir, url, model="my-teacher")
    run_stage(workdir, "generate")
    server.terminate()
    server.wait(timeout=30)
    with_model, _ = launch(tiny_model, "--served-model-name", "my-teacher", env=python_env(), port=port)
    try:
        run_stage(workdir, "generate")
        # (a retry of a slow reply may add requests: what matters is that none was answered from the cache)
        assert server_stats(url)["requests"] >= ROWS and run_info(workdir)["cache_hits"] == 0
    finally:
        with_model.terminate()
        with_model.wait(timeout=30)
    teachers = {r["teacher"] for r in read_jsonl(workdir / "data/generate/genz_dataset.jsonl")}
    assert teachers == {"openai:my-teacher"}


def test_sigterm_keeps_what_requests_in_flight_bring_back(workdir: Path, own_cache: Path) -> None:
    """Issue 23, point 14: after SIGTERM the stage waited for the requests in flight, then threw their
    results away (paid, never counted). Now no new request starts, and each one in flight is recorded as
    it finishes: every request the server answered is in the cache, as sent and as a result."""
    cache = own_cache / "generate.jsonl"
    with served("rules", "--latency", "1.0") as url:
        write_params(workdir, url, concurrency=4)
        proc = subprocess.Popen(
            stage_command("generate"), cwd=workdir, env=python_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while len(results(cache)) < 4:
            assert proc.poll() is None and time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        stats = server_stats(url)
    records = list(read_jsonl_tolerant(cache))
    sent = sum("sent" in r for r in records)
    answered = sum("output" in r for r in records)
    assert sent == stats["requests"] == stats["answered"] == answered > 4
    assert "Traceback" not in proc.stderr.read().decode()  # type: ignore[union-attr]
