"""A real git + DVC repo of the tiny pipeline, and the commands tests run in it (shared by the pipeline
tests, the remote-storage tests and benchmarks/remote_transfer.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import ROOT, copy_project, python_env, tiny_params

STAGES = ["prepare", "generate", "train", "merge", "evaluate", "plot", "export"]


def sh(cwd: Path, *cmd: str, timeout: int = 1200, env: dict[str, str] | None = None) -> str:
    """Run `cmd` in `cwd`, which must succeed; its stdout and stderr."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=env or python_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def ran(output: str) -> list[str]:
    """The stages a `dvc repro` or `dvc exp run` output says it ran, in order."""
    return re.findall(r"Running stage '(\w+)'", output)


def build_tiny_repo(repo: Path, tiny_model: Path) -> None:
    """The project in a fresh git + DVC repo at `repo` with the tiny params, reproduced and committed."""
    repo.mkdir(parents=True)
    copy_project(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model), sort_keys=False))
    (repo / ".gitignore").write_text("/.cache/\n__pycache__/\n")
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "git", "config", "user.name", "test")
    sh(repo, "git", "config", "user.email", "test@localhost")
    sh(repo, "dvc", "init", "-q")
    shutil.copytree(ROOT / ".dvc/plots", repo / ".dvc/plots")  # the vega templates dvc.yaml's plots name
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")
    out = sh(repo, "dvc", "repro")
    assert ran(out) == STAGES
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "repro")


def pushed_objects(repo: Path, prefix: str = "genz-speak/") -> set[str]:
    """The keys a complete `dvc push` leaves under `prefix` in a bucket (with prefix "", the paths under
    .dvc/cache): every DVC-cached output dvc.lock names, and the files of each folder output (listed in
    its .dir manifest in the cache)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    cached: set[str] = set()
    for stage in stages.values():
        for item in [o for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])]:
            path, opts = (item, None) if isinstance(item, str) else next(iter(item.items()))
            if (opts or {}).get("cache", True):
                cached.add(path)
    hashes = []
    for stage in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values():
        hashes += [o["md5"] for o in stage.get("outs", []) if o["path"] in cached]
    for h in [h for h in hashes if h.endswith(".dir")]:
        manifest = json.loads((repo / ".dvc/cache/files/md5" / h[:2] / h[2:]).read_text())
        hashes += [entry["md5"] for entry in manifest]
    return {f"{prefix}files/md5/{h[:2]}/{h[2:]}" for h in hashes}
