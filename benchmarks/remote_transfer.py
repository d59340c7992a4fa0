"""`dvc push` and `dvc pull` of a reproduced pipeline's outputs: through an S3 API (moto's server on
127.0.0.1, the one tests/pipeline/test_remote_s3.py runs) and through a directory remote (the default
remote's kind). A Markdown table.

    python benchmarks/remote_transfer.py               # this checkout's outputs (after `dvc repro`)
    python benchmarks/remote_transfer.py --tiny        # the tests' tiny pipeline, reproduced first (~2.5 min)
    python benchmarks/remote_transfer.py --repo DIR    # any reproduced genz-speak repo

Each round gets a new remote (a new bucket, an empty folder) and two clones of the repo's HEAD: the pusher,
whose DVC cache is the repo's own, runs `dvc push` (cold: the remote is empty) and `dvc push` again (no-op:
every object is there, DVC only asks); the puller, with an empty cache, runs `dvc pull` (download and
checkout). Times are wall clock of the whole command, DVC's start-up included (the start-up column:
`dvc remote list`, a command that transfers nothing); the median over --rounds.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' S3 server and tiny-pipeline builder

from tests.pipeline.dvcrepo import build_tiny_repo, pushed_objects  # noqa: E402
from tests.pipeline.moto_s3 import REGION, S3Server  # noqa: E402


def dvc_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def timed(cwd: Path, *cmd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def clone(repo: Path, dest: Path, url: str, endpoint: str | None, cache: Path | None) -> Path:
    subprocess.run(["git", "clone", "-q", str(repo), str(dest)], check=True)
    timed(dest, "dvc", "remote", "add", "--local", "-d", "bench", url)
    if endpoint:
        timed(dest, "dvc", "remote", "modify", "--local", "bench", "endpointurl", endpoint)
    if cache:
        timed(dest, "dvc", "cache", "dir", "--local", str(cache))
    return dest


def one_round(repo: Path, work: Path, kind: str, s3: S3Server) -> dict[str, float]:
    if kind == "s3":
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        s3.client().create_bucket(Bucket=bucket)
        url, endpoint = f"s3://{bucket}/genz-speak", s3.url
    else:
        url, endpoint = str(work / "remote"), None
    pusher = clone(repo, work / "pusher", url, endpoint, repo / ".dvc/cache")
    puller = clone(repo, work / "puller", url, endpoint, None)
    return {
        "startup": timed(pusher, "dvc", "remote", "list"),
        "push": timed(pusher, "dvc", "push"),
        "noop": timed(pusher, "dvc", "push"),
        "pull": timed(puller, "dvc", "pull"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--tiny", action="store_true", help="build and reproduce the tests' tiny pipeline")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
        base = Path(tmp)
        repo = args.repo
        if args.tiny:
            from genz_speak.testing import tiny

            model = tiny.llama(base / "tiny-model", tiny.student_tokenizer())
            repo = base / "tiny"
            build_tiny_repo(repo, model)
        objects = pushed_objects(repo, prefix="")
        missing = [o for o in objects if not (repo / ".dvc/cache" / o).is_file()]
        if missing:
            raise SystemExit(f"{repo}: {len(missing)} of {len(objects)} outputs' objects not in .dvc/cache")
        mib = sum((repo / ".dvc/cache" / o).stat().st_size for o in objects) / 2**20
        s3 = S3Server()
        s3.start()
        rows = []
        for kind in ("s3", "directory"):
            rounds = [one_round(repo, base / f"{kind}-{i}", kind, s3) for i in range(args.rounds)]
            rows.append((kind, {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}))
        s3.stop()
    where = "the tiny pipeline" if args.tiny else str(repo)
    print(f"{where}: {len(objects)} objects, {mib:.1f} MiB; {platform.node()}, {os.cpu_count()} CPUs;")
    print(f"median of {args.rounds} rounds\n")
    header = ["remote", "`dvc push` (empty remote)", "`dvc push` (no-op)", "`dvc pull` (fresh clone)"]
    print(f"| {' | '.join([*header, 'DVC start-up'])} |")
    print("|---|---|---|---|---|")
    for kind, t in rows:
        name = "S3 (moto server, 127.0.0.1)" if kind == "s3" else "directory (local disk)"
        cells = [f"{t[k]:.2f} s" for k in ("push", "noop", "pull", "startup")]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
