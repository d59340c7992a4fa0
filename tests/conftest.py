"""Shared fixtures: a tiny random-weight Llama with the embedded student's tokenizer, and a tiny params file.

Tiny models run with one OpenMP thread: with two, spin-waiting made their steps 30-60x slower here.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tempfile

# The shared caches (`cache.cache_root`: rewrites, verdicts, answers, the offline judge's models) of a test
# session live in a temporary folder, never in ~/.cache; each test gets its own (`own_cache` below), so no
# test reuses another's rewrites or verdicts. Session- and module-scoped fixtures share this one.
os.environ["GENZ_SPEAK_CACHE"] = tempfile.mkdtemp(prefix="genz-speak-cache-")

import copy
import importlib.util
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from genz_speak.testing import tiny

ROOT = Path(__file__).resolve().parents[1]
# The project's own data files (tracked in git) that stages read.
DATA_FILES = ("data/questions.jsonl", "data/genz_corpus.jsonl")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (`-n 2 --dist loadgroup`, pyproject's addopts) a group runs on one worker: a test
    # file is one group, so its module fixtures (a whole pipeline run in test_stages) are built once. The
    # DVC pipeline tests (a third of the suite's time) go to whichever worker is free, each worker building
    # the session template once: kept on one worker, they left the other idle for half the run.
    for item in items:
        rel = item.path.relative_to(ROOT / "tests")
        if rel != Path("pipeline/test_dvc_pipeline.py"):
            item.add_marker(pytest.mark.xdist_group(str(rel)))
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's shared-cache folder ($GENZ_SPEAK_CACHE; stage subprocesses inherit it)."""
    cache = tmp_path / "genz-speak-cache"
    monkeypatch.setenv("GENZ_SPEAK_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 Llama with random weights and SmolLM2's tokenizer and chat template."""
    return tiny.llama(tmp_path_factory.mktemp("tiny-model"), tiny.student_tokenizer())


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The five tiny student families (`genz_speak.testing.tiny.FAMILIES`), built once: a few seconds."""
    root = tmp_path_factory.mktemp("families")
    return {name: tiny.family(name, root / name) for name in tiny.FAMILIES}


def tiny_params(tiny_model: Path) -> dict[str, Any]:
    """params.yaml with every stage shrunk to seconds on the tiny model."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    p = copy.deepcopy(params)
    p["prepare"].update(base_model=str(tiny_model), max_train_rows=100, validation_size=10)
    # The learning rate is the tests' own, so the golden values do not move with the default's.
    p["train"].update(
        max_steps=2,
        batch_size=2,
        max_seq_length=384,
        logging_steps=1,
        cpu_threads=1,
        learning_rate=1e-3,
        cpu_precision="fp32",  # the golden values the same on CPUs with and without bf16 instructions
    )
    p["evaluate"].update(max_validation=2, bootstrap_samples=200)
    # Greedy with the old penalty: the golden values do not move with the decoding default.
    p["evaluate"]["decoding"].update(
        max_new_tokens=8, temperature=0.0, repetition_penalty=1.2, count_prompt=True, no_repeat_ngram_size=0
    )
    return p


@pytest.fixture
def tiny_params_dict(tiny_model: Path) -> dict[str, Any]:
    return tiny_params(tiny_model)


def python_env(cache: Path | None = None) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first on PATH (dvc.yaml runs `python`); the
    shared cache is this test's, or `cache`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    if cache is not None:
        env["GENZ_SPEAK_CACHE"] = str(cache)
    return env


def stage_command(name: str, params: str = "params.yaml", **paths: str | Path) -> list[str]:
    """The stage's command exactly as dvc.yaml runs it, with this interpreter, a params file, and any of
    its path arguments replaced (`out_dir=...` replaces the value after `--out-dir`)."""
    cmd = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]["cmd"])
    assert cmd[0] == "python", cmd
    cmd[0], cmd[1] = sys.executable, str(ROOT / cmd[1])
    for flag, value in paths.items():
        cmd[cmd.index("--" + flag.replace("_", "-")) + 1] = str(value)
    return [*cmd, "--params", params]


def stage_process(
    workdir: Path,
    name: str,
    params: str = "params.yaml",
    env: dict[str, str] | None = None,
    **paths: str | Path,
) -> subprocess.CompletedProcess[str]:
    """Run stage `name` in `workdir` as dvc.yaml does; its exit status and output, whatever they are."""
    cmd = stage_command(name, params, **paths)
    return subprocess.run(
        cmd, cwd=workdir, env=env or python_env(), capture_output=True, text=True, timeout=900
    )


def run_stage(
    workdir: Path,
    name: str,
    params: str = "params.yaml",
    env: dict[str, str] | None = None,
    **paths: str | Path,
) -> subprocess.CompletedProcess[str]:
    """`stage_process`, which must succeed."""
    proc = stage_process(workdir, name, params, env, **paths)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-4000:]}"
    return proc


@contextmanager
def served(model: str | Path, *options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`genz-speak serve MODEL OPTIONS` on a free 127.0.0.1 port for the block; yields its /v1 URL."""
    from genz_speak.testing.serve import launch

    proc, url = launch(model, *options, env=env or python_env())
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# The name metrics give each `genz-speak serve --faults` kind the clients retry, once they have seen it
# (tests/stages/test_fault_matrix.py plays the other kinds: replies a teacher rejects or cleans, refusals).
FAULT_LABELS = {
    "429": "HTTP 429",
    "429-bare": "HTTP 429",
    "429-negative": "HTTP 429",  # Retry-After: -1, nan or an HTTP date
    "429-nan": "HTTP 429",
    "429-date": "HTTP 429",
    "500": "HTTP 500",
    "502": "HTTP 502",
    "503": "HTTP 503",
    "stall": "APITimeoutError",
    "nonjson": "NotJSONBody",
    "badjson": "NotJSONBody",
    "nochoices": "NoContent",
    "nullcontent": "NoContent",
    "truncated": "APIConnectionError",
    "reset": "APIConnectionError",
    "prose": "BadVerdict",  # the judge's; a teacher takes prose as a rewrite
    "badkeys": "BadVerdict",
    "badrange": "BadVerdict",
    "length": "BadVerdict",  # a verdict cut off; a teacher rejects a cut-off reply instead
    "jsonblob": "BadVerdict",
    "unrelated": "BadVerdict",
    "extrakeys": "BadVerdict",
}
TEACHER_FAULTS = [k for k in FAULT_LABELS if FAULT_LABELS[k] != "BadVerdict"]


def server_stats(url: str) -> dict[str, int]:
    """What a `genz-speak serve` saw: requests, faults by kind, answers, refused keys."""
    import httpx

    stats: dict[str, int] = httpx.get(f"{url}/stats", timeout=10).json()
    return stats


def write_prepared(dest: Path, train: list[Any], validation: list[Any], heldout: list[Any]) -> None:
    """A project folder as prepare leaves it, for a later stage run on its own: the three splits, and the
    data files generate and evaluate read beside them (the corpus: few-shot exemplars, the style model)."""
    from genz_speak.io import write_jsonl

    for name, rows in (("train", train), ("validation", validation), ("heldout", heldout)):
        write_jsonl(dest / f"data/prepare/{name}.jsonl", rows)
    shutil.copy(ROOT / "data/genz_corpus.jsonl", dest / "data/genz_corpus.jsonl")


def copy_project(dest: Path) -> None:
    """The files a clone of the project has (tracked sources), without outputs."""
    for name in ("stages", "src", "dvc.yaml", "params.yaml", *DATA_FILES, "pyproject.toml"):
        src = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, target)


@pytest.fixture(scope="session")
def have_unsloth() -> bool:
    return importlib.util.find_spec("unsloth") is not None
