"""The openai teacher through the generate stage, against `genz-speak serve` with faults injected."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from genz_speak.data.questions import validate_rows
from genz_speak.io import read_jsonl, read_jsonl_tolerant, write_jsonl
from genz_speak.serve import launch
from tests.conftest import ROOT, python_env, stage_command

pytestmark = pytest.mark.slow
ROWS = 30


def start_server(model: Path, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    return launch(model, *options, env=python_env())


@pytest.fixture
def workdir(tmp_path: Path, tiny_model: Path) -> Path:
    rows = validate_rows(read_jsonl(ROOT / "data/questions.jsonl")[:ROWS], "questions")
    write_jsonl(tmp_path / "data/prepare/train.jsonl", rows[:20])
    write_jsonl(tmp_path / "data/prepare/validation.jsonl", rows[20:25])
    write_jsonl(tmp_path / "data/prepare/heldout.jsonl", rows[25:])
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
        min_chars=1, keep_numbers=False, max_echo_similarity=1.0, max_length_ratio=100.0
    )
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))


def test_every_row_completes_through_injected_faults(workdir: Path, tiny_model: Path) -> None:
    server, url = start_server(
        tiny_model, "--fault-every", "3", "--faults", "429,500,stall,nonjson", "--stall", "4"
    )
    try:
        write_params(workdir, url)
        proc = subprocess.run(
            stage_command("generate"),
            cwd=workdir,
            env={**python_env(), "GENZ_TEST_KEY": "sk-secret-xyz"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        stats = httpx.get(f"{url}/stats").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dataset = read_jsonl(workdir / "data/generate/genz_dataset.jsonl")
    rejects = read_jsonl(workdir / "data/generate/rejects.jsonl")
    ids = [r["id"] for r in dataset] + [r["id"] for r in rejects]
    assert len(ids) == len(set(ids)) == ROWS
    m = json.loads((workdir / "metrics/generate.json").read_text())
    assert m["teacher_failures"] == 0 and m["rows"] == ROWS
    faults = sum(stats.get(k, 0) for k in ("429", "500", "stall", "nonjson"))
    assert all(stats.get(k, 0) > 0 for k in ("429", "500", "stall", "nonjson")), stats
    assert m["retries"] >= faults  # every fault cost one retry
    assert stats["requests"] == ROWS + m["retries"]
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
        rerun = subprocess.run(
            stage_command("generate"),
            cwd=workdir,
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
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
