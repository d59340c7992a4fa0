"""Kill a stage at a random point (several seeds), rerun it, and compare with an uninterrupted run.

Each stage runs as dvc.yaml's command in a subprocess; the kill is SIGKILL (nothing can clean up) unless
a case says otherwise. Kill points are drawn from a seeded RNG over the stage's own progress markers
(rows in the generate cache, answer batches in the evaluate cache, checkpoints in train's work dir), so a
kill always lands mid-run.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from genz_speak.cache import read_jsonl_tolerant
from genz_speak.data.dataset import dataset_row
from genz_speak.data.questions import validate_rows
from genz_speak.io import read_jsonl, write_jsonl
from tests.conftest import ROOT, python_env, stage_command, write_prepared
from tests.stages.test_generate_openai import start_server

pytestmark = pytest.mark.slow
ROWS = validate_rows(read_jsonl(ROOT / "data/questions.jsonl")[:48], "questions")


def cache_of(ws: Path) -> Path:
    """The workspace's own shared-cache folder: a reference run and a killed one must not share one."""
    return ws / ".genz-cache"


def kill_when(cmd: list[str], cwd: Path, ready: Callable[[], bool], sig: int = signal.SIGKILL) -> int:
    """Start `cmd`, send `sig` once `ready()` holds, return the exit status."""
    env = python_env(cache_of(cwd))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"finished before the kill point: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)
    proc.send_signal(sig)
    return proc.wait(timeout=120)


def run(cmd: list[str], cwd: Path) -> str:
    env = python_env(cache_of(cwd))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def lines_in(path: Path) -> int:
    """Finished rows or answers in a cache log (not the records of requests sent)."""
    return sum("sent" not in r for r in read_jsonl_tolerant(path))


def project(tmp: Path, params: dict[str, Any]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    write_prepared(tmp, ROWS[:30], ROWS[30:38], ROWS[38:])
    return tmp


# ------------------------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def rules_server() -> Any:
    server, url = start_server(Path("rules"), "--latency", "0.05")
    yield url
    server.terminate()
    server.wait(timeout=30)


def generate_params(tiny_params_dict: dict[str, Any], url: str) -> dict[str, Any]:
    p = tiny_params_dict
    p["generate"].update(
        teacher="openai", model="rules", base_url=url, concurrency=3, max_reject_fraction=1.0
    )
    return p


@pytest.fixture(scope="module")
def generate_reference(
    tmp_path_factory: pytest.TempPathFactory, rules_server: str, tiny_model: Path
) -> bytes:
    from tests.conftest import tiny_params

    ws = project(tmp_path_factory.mktemp("gen-ref"), generate_params(tiny_params(tiny_model), rules_server))
    run(stage_command("generate"), ws)
    return (ws / "data/generate/genz_dataset.jsonl").read_bytes()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generate_killed_anywhere_resumes_to_the_same_dataset(
    seed: int, tmp_path: Path, rules_server: str, tiny_params_dict: dict[str, Any], generate_reference: bytes
) -> None:
    ws = project(tmp_path, generate_params(tiny_params_dict, rules_server))
    cache = cache_of(ws) / "generate.jsonl"
    at = random.Random(seed).randint(1, len(ROWS) - 2)
    kill_when(stage_command("generate"), ws, lambda: cache.is_file() and lines_in(cache) >= at)
    done = lines_in(cache)
    assert at <= done < len(ROWS) and not (ws / "data/generate/genz_dataset.jsonl").exists()
    run(stage_command("generate"), ws)
    assert (ws / "data/generate/genz_dataset.jsonl").read_bytes() == generate_reference
    keys = [r["key"] for r in read_jsonl_tolerant(cache) if "sent" not in r]
    assert len(keys) == len(set(keys)) == len(ROWS)  # nothing lost, nothing paid for twice
    metrics = json.loads((ws / "metrics/run/generate.json").read_text())
    assert metrics["cache_hits"] == done and metrics["teacher_calls"] == len(ROWS) - done


def test_generate_sigterm_exits_cleanly(
    tmp_path: Path, rules_server: str, tiny_params_dict: dict[str, Any]
) -> None:
    ws = project(tmp_path, generate_params(tiny_params_dict, rules_server))
    cache = cache_of(ws) / "generate.jsonl"
    status = kill_when(
        stage_command("generate"), ws, lambda: cache.is_file() and lines_in(cache) >= 5, signal.SIGTERM
    )
    assert status == 128 + signal.SIGTERM
    assert not list(ws.rglob("*.tmp")) and not (ws / "data/generate").exists()


# ------------------------------------------------------------------------------------------- evaluate
def evaluate_workspace(tmp: Path, params: dict[str, Any], tiny_model: Path) -> Path:
    params["evaluate"].update(batch_size=2, max_validation=4)
    ws = project(tmp, params)
    shutil.copytree(tiny_model, ws / "models/prepare")
    shutil.copytree(tiny_model, ws / "models/merge")
    rows = [
        dataset_row(r, split, f"ngl {r['response']} fr fr")
        for split, rows in (("train", ROWS[:30]), ("validation", ROWS[30:38]), ("heldout", ROWS[38:]))
        for r in rows
    ]
    write_jsonl(ws / "data/generate/genz_dataset.jsonl", rows)
    return ws


def test_evaluate_killed_anywhere_resumes_to_the_same_answers(
    tmp_path: Path, tiny_params_dict: dict[str, Any], tiny_model: Path
) -> None:
    ref = evaluate_workspace(tmp_path / "ref", json.loads(json.dumps(tiny_params_dict)), tiny_model)
    run(stage_command("evaluate"), ref)
    batches = lines_in(cache_of(ref) / "answers.jsonl") // 2  # 2 answers per batch
    for seed in (0, 1):
        ws = evaluate_workspace(
            tmp_path / f"kill{seed}", json.loads(json.dumps(tiny_params_dict)), tiny_model
        )
        cache = cache_of(ws) / "answers.jsonl"
        at = 2 * random.Random(seed).randint(1, batches - 1)
        kill_when(stage_command("evaluate"), ws, lambda c=cache, n=at: c.is_file() and lines_in(c) >= n)
        assert not (ws / "metrics/evaluate.json").exists()
        log = run(stage_command("evaluate"), ws)
        assert "batches cached" in log
        for name in ("data/evaluate/answers.jsonl", "data/evaluate/scores.jsonl", "metrics/evaluate.json"):
            assert (ws / name).read_bytes() == (ref / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------- train
def test_train_resume_continues_from_the_last_checkpoint(
    tmp_path: Path, tiny_params_dict: dict[str, Any], tiny_model: Path
) -> None:
    params = json.loads(json.dumps(tiny_params_dict))
    params["train"].update(max_steps=6, resume=True, save_steps=2, logging_steps=1)
    ref = evaluate_workspace(tmp_path / "ref", json.loads(json.dumps(params)), tiny_model)
    run(stage_command("train"), ref)
    assert not (ref / ".cache/train").exists()  # checkpoints go once the adapter is written

    ws = evaluate_workspace(tmp_path / "kill", params, tiny_model)
    kill_when(stage_command("train"), ws, lambda: (ws / ".cache/train/checkpoint-4").is_dir())
    # The kill may land while checkpoint-4 is being written: then it resumes from checkpoint-2.
    assert not (ws / "models/train").exists()
    log = run(stage_command("train"), ws)
    assert "train.resume: resuming from .cache/train/checkpoint-" in log
    got = json.loads((ws / "metrics/train.json").read_text())
    want = json.loads((ref / "metrics/train.json").read_text())
    assert got["steps"] == want["steps"] == 6
    assert got["final_loss"] == pytest.approx(want["final_loss"], rel=1e-3)

    # Changed params make old checkpoints stale: they are discarded, not resumed from.
    kill_when(stage_command("train"), ws, lambda: (ws / ".cache/train/checkpoint-2").is_dir())
    params["train"]["learning_rate"] = 2e-3
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    assert "resuming" not in run(stage_command("train"), ws)


def test_data_parallel_train_stops_as_a_group_and_resumes(
    tmp_path: Path, tiny_params_dict: dict[str, Any], tiny_model: Path
) -> None:
    """SIGTERM to a two-process train stage stops every process of the group, writes no adapter, and a
    rerun resumes both processes from rank 0's last checkpoint."""
    import psutil

    params = json.loads(json.dumps(tiny_params_dict))
    params["train"].update(num_processes=2, max_steps=8, resume=True, save_steps=2, logging_steps=1)
    ws = evaluate_workspace(tmp_path / "dp", params, tiny_model)
    # At checkpoint-4, so that a kill while it is being written still leaves checkpoint-2 to resume from.
    status = kill_when(
        stage_command("train"), ws, lambda: (ws / ".cache/train/checkpoint-4").is_dir(), signal.SIGTERM
    )
    assert status == 128 + signal.SIGTERM
    time.sleep(1)
    left = [p.pid for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(ws)]
    assert not left, f"processes of the stopped group still run: {left}"
    assert not (ws / "models/train").exists() and not list((ws / "models").glob("*.tmp"))

    log = run(stage_command("train"), ws)
    assert "train.resume: resuming from .cache/train/checkpoint-" in log
    m = json.loads((ws / "metrics/train.json").read_text())
    assert (m["steps"], m["processes"], m["adapter_ranks_checked"]) == (8, 2, 2)
