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

from genz_speak.data.questions import validate_rows
from genz_speak.io import read_jsonl, read_jsonl_tolerant
from genz_speak.testing.serve import launch
from tests.conftest import (
    FAULT_LABELS,
    ROOT,
    TEACHER_FAULTS,
    python_env,
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
    )
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))


def test_every_row_completes_through_injected_faults(workdir: Path, tiny_model: Path) -> None:
    """Every third request gets a fault, each kind in turn. (A 200 labelled application/json whose body
    is not JSON crashed the stage with a JSONDecodeError traceback before: issue 15, defect 1.)"""
    faults = ",".join(TEACHER_FAULTS)
    with served(tiny_model, "--fault-every", "3", "--faults", faults, "--stall", "4") as url:
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
    assert m["teacher_failures"] == 0 and m["rows"] == ROWS
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


def test_killed_run_resumes_without_loss_or_duplicates(workdir: Path, tiny_model: Path) -> None:
    server, url = start_server(tiny_model, "--latency", "0.3")
    try:
        write_params(workdir, url, concurrency=2)
        cache = workdir / ".cache/generate.jsonl"
        proc = subprocess.Popen(
            stage_command("generate"),
            cwd=workdir,
            env=python_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 300
        while len(list(read_jsonl_tolerant(cache))) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len(list(read_jsonl_tolerant(cache)))
        assert 6 <= done_before < ROWS and not (workdir / "data/generate/genz_dataset.jsonl").exists()
        rerun = stage_process(workdir, "generate")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = json.loads((workdir / "metrics/generate.json").read_text())
    assert m["cache_hits"] == done_before and m["teacher_calls"] == ROWS - done_before
    keys = [r["key"] for r in read_jsonl_tolerant(cache)]
    assert len(keys) == len(set(keys)) == ROWS
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
    with served("rules", "--fault-first", "2", "--faults", "500") as url:
        write_params(workdir, url, max_retries=1, max_reject_fraction=0.5)
        failed = stage_process(workdir, "generate")
        first = server_stats(url)
        after_failure = {name: (workdir / name).read_bytes() for name in prior}
        rerun = stage_process(workdir, "generate")
        second = server_stats(url)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    error = [line for line in failed.stderr.splitlines() if " ERROR genz_speak.stage: " in line]
    assert len(error) == 1, failed.stderr[-3000:]
    assert f"{ROWS}/{ROWS} rows rejected (over generate.max_reject_fraction=0.5)" in error[0]
    assert "InternalServerError: Error code: 500" in error[0]  # the reason, with its count
    assert after_failure == prior
    assert first["requests"] == first["500"] == 2 * ROWS  # every row: a try and a retry, both faulted

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = json.loads((workdir / "metrics/generate.json").read_text())
    assert m["rows"] + m["rejected"] == ROWS and m["teacher_failures"] == 0
    assert m["runs"] == 2 and m["teacher_calls"] == ROWS
    assert m["faults"] == {"HTTP 500": second["500"]} == {"HTTP 500": 2 * ROWS}
    assert m["requests"] == second["requests"] == 3 * ROWS
    assert m["retries"] == ROWS  # one per row in the failed run; none in the rerun


def test_no_usable_row_fails_whatever_the_threshold(workdir: Path) -> None:
    prior = prior_outputs(workdir)
    with served("rules", "--fault-first", "9", "--faults", "nochoices") as url:
        write_params(workdir, url, max_retries=0, max_reject_fraction=1.0)
        proc = stage_process(workdir, "generate")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"{ROWS}/{ROWS} rows rejected (no row is left)" in proc.stderr
    assert "teacher: NoContent: reply has no choices" in proc.stderr
    assert {name: (workdir / name).read_bytes() for name in prior} == prior
