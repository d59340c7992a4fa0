"""stash and run, there (on the GPU machine, no network): the pieces back into wheels, installed into a target
folder, and the tasks run one after another under one time budget. Standard library only: this runs on the
machine's own python3 before anything is installed."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import report

ROOT = Path(__file__).resolve().parents[2]
KIT = "bash scripts/gpu_kit.sh"
BENCH_ARGS = "--models tinyllama --cases 8x1 packing full-8x1 packing-32"
RESERVE = 20  # seconds kept for the summary after the last task
MIN_SECONDS = {"pipeline": 120, "tests": 60, "bench": 60, "grid": 240, "vllm": 180, "cmd": 10}
GRID = "train.learning_rate=5e-4,1e-3 train.epochs=1,2"
STAGE_LINE = re.compile(r"^Running stage '([\w-]+)'")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def manifest(stash: Path, bundle: str) -> dict | None:
    f = stash / f"{bundle}.manifest"
    return json.loads(f.read_text()) if f.is_file() else None


def stash(piece: int, dest: Path, to: Path) -> int:
    """Copy piece N (this call carried dest/cN) to the stash, which outlives the call while the machine is
    warm."""
    src = dest / f"c{piece}"
    if not src.is_dir():
        sys.exit(f"{src} is not here: name it in the call's carry")
    to.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy2(f, to / f.name)
    bundle = next(src.glob("*.manifest")).name.removesuffix(".manifest")
    m = manifest(to, bundle)
    have = [i for i in range(m["pieces"]) if (to / f"{bundle}.tar.part-{i:02d}").is_file()]
    log(f"piece {piece} stashed in {to}: {bundle} has {len(have)} of its {m['pieces']} pieces there")
    return 0


class Run:
    """One `run` call: the clock, the steps' results, the install targets and the environments."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.budget
        self.started = time.time()
        self.work: Path = args.work.resolve()
        self.out: Path = args.out.resolve()
        self.python: str = args.python
        self.stage_python = args.stage_python or args.python
        self.steps: list[tuple[str, str]] = []
        self.stages: list[tuple[float, str]] = []
        self.repro_end = 0.0
        self.vllm_install: subprocess.Popen | None = None

    def left(self) -> int:
        return int(self.deadline - time.monotonic())

    def env(self, target: str = "site") -> dict[str, str]:
        """The tasks' environment: the carried packages on the path, nothing reaching for a network."""
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            TOKENIZERS_PARALLELISM="false",
            DVC_NO_ANALYTICS="1",
            GIT_PYTHON_REFRESH="quiet",
            DO_NOT_TRACK="1",
        )
        site = self.work / target
        if target == "vllm":  # vLLM alone on the path: the training stack (torchao, unsloth) must not be seen
            env.update(
                PYTHONPATH=str(site),
                VLLM_USE_FLASHINFER_SAMPLER="0",
                VLLM_NO_USAGE_STATS="1",
                TVM_FFI_DISABLE_TORCH_C_DLPACK="1",
            )
        else:
            env["PYTHONPATH"] = f"{ROOT / 'src'}:{site}"
        env["PATH"] = f"{self.work / 'bin'}:{site / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def step(
        self,
        name: str,
        cmd: list[str],
        logname: str,
        cap: int | None = None,
        target: str = "site",
        on_line=None,
    ) -> int:
        """Run cmd for at most cap seconds and what the budget leaves, every output line timed into
        $OUT/logname; record its exit status (124: timed out) and time."""
        secs = min(self.left() - RESERVE, cap or 10**6)
        if secs < 10:
            self.steps.append((name, f"skipped: {self.left()} s left"))
            return 124
        log(f"{name} (at most {secs} s): {shlex.join(cmd)}")
        t0 = time.monotonic()
        with (self.out / logname).open("a") as out:
            out.write(f"=== {name}\n$ {shlex.join(cmd)}\n")
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env(target),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            timed_out = threading.Event()
            timer = threading.Timer(secs, lambda: (timed_out.set(), stop(proc)))
            timer.start()
            for line in proc.stdout:
                stamped = f"{time.strftime('%H:%M:%S')} {line}"
                out.write(stamped)
                sys.stdout.write(stamped)
                if on_line:
                    on_line(line)
            rc = proc.wait()
            timer.cancel()
        rc = 124 if timed_out.is_set() else rc
        self.steps.append(
            (name, f"rc {rc}{' (timed out)' if rc == 124 else ''}, {time.monotonic() - t0:.0f} s")
        )
        return rc


def stop(proc: subprocess.Popen) -> None:
    """The step's time is up: its whole process group gets SIGTERM, then SIGKILL 15 s later."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 0)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait or None)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def install(r: Run, bundle: str, background: bool = False) -> subprocess.Popen | None:
    """Reassemble the bundle's pieces from the stash, check its sha256, install its wheels into work/BUNDLE
    (--no-deps, --no-index: the list is complete for that machine; vLLM's own pins cannot all hold). The
    target appears whole or not at all, and is reused by later calls while the machine stays warm."""
    stash, target = r.args.stash, r.work / bundle
    m = manifest(stash, bundle)
    done = target / ".bundle-sha256"
    if done.is_file() and (m is None or done.read_text().strip() == m["sha256"]):
        log(f"{bundle}: installed already in {target}")
        return None
    if m is None:
        sys.exit(f"{bundle}: no pieces in {stash}: make the stash calls first, back to back")
    parts = [stash / f"{bundle}.tar.part-{i:02d}" for i in range(m["pieces"])]
    if missing := [p.name for p in parts if not p.is_file()]:
        sys.exit(f"{bundle}: {missing} missing from {stash} (a fresh machine?): start again at stash 1")
    t0 = time.monotonic()
    wheels = r.work / f"{bundle}-wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    tar = r.work / f"{bundle}.tar"
    with tar.open("wb") as out:
        for p in parts:
            out.write(p.read_bytes())
    sha = subprocess.check_output(["sha256sum", str(tar)], text=True).split()[0]
    if sha != m["sha256"]:
        sys.exit(f"{bundle}: sha256 {sha} is not the manifest's {m['sha256']}: start again at stash 1")
    with tarfile.open(tar) as t:
        t.extractall(wheels, filter="data")
    tar.unlink()
    for sdist in wheels.glob("*.tar.gz"):  # llama.cpp's converter, installed by install_converter
        (r.work / "sdist").mkdir(exist_ok=True)
        shutil.move(sdist, r.work / "sdist" / sdist.name)
    shutil.rmtree(target.with_suffix(".part"), ignore_errors=True)
    cmd = [
        r.python,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--disable-pip-version-check",
        "--target",
        str(target.with_suffix(".part")),
        *sorted(str(w) for w in wheels.glob("*.whl")),
    ]
    part, target_q = shlex.quote(str(target.with_suffix(".part"))), shlex.quote(str(target))
    finish = f"rm -rf {target_q} && mv {part} {target_q} && echo {sha} > {shlex.quote(str(done))}"
    script = f"{shlex.join(cmd)} && {finish} && rm -rf {shlex.quote(str(wheels))}"
    if background:
        log(f"{bundle}: {m['wheels']} wheels checked; installing in the background")
        return subprocess.Popen(
            ["bash", "-c", script],
            stdout=(r.work / f"{bundle}-install.log").open("w"),
            stderr=subprocess.STDOUT,
        )
    rc = subprocess.run(["bash", "-c", script]).returncode
    r.steps.append(
        (
            f"reassemble, check and install the {bundle} bundle ({m['wheels']} wheels)",
            f"rc {rc}, {time.monotonic() - t0:.0f} s",
        )
    )
    if rc:
        sys.exit(f"{bundle}: installing the wheels failed (above)")
    return None


def stage_python_wrapper(r: Run) -> None:
    """`python` in dvc.yaml's commands: the stage interpreter. One other than the installing one (simulate)
    brings its own packages, so it sees the project's source alone."""
    (r.work / "bin").mkdir(parents=True, exist_ok=True)
    exe = shutil.which(r.stage_python) or r.stage_python
    own = f"export PYTHONPATH={shlex.quote(str(ROOT / 'src'))}\n" if r.stage_python != r.python else ""
    wrapper = r.work / "bin/python"
    wrapper.write_text(f'#!/bin/sh\n{own}exec {shlex.quote(exe)} "$@"\n')
    wrapper.chmod(0o755)


def install_converter(r: Run) -> None:
    """llama.cpp's HF -> GGUF converter into the stage interpreter's prefix, which the export stage runs it
    from: what scripts/setup.sh does here (`python -m genz_speak.export.converter install SDIST`), from the
    cut-down sdist the site bundle brings. Skipped when that version is there already."""
    py = [str(r.work / "bin/python"), "-m", "genz_speak.export.converter"]
    sdists = sorted((r.work / "sdist").glob("llama_cpp_python-*.tar.gz"))
    have = subprocess.run([*py, "version"], cwd=ROOT, env=r.env(), capture_output=True, text=True)
    if not sdists:
        if have.returncode:
            r.steps.append(
                ("llama.cpp's converter", "failed: not installed, and no sdist came (`prep` again)")
            )
        return
    version = sdists[-1].name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")
    if have.returncode == 0 and f'"{version}"' in have.stdout:
        log(f"llama.cpp's converter {version}: installed already")
        return
    t0 = time.monotonic()
    got = subprocess.run(
        [*py, "install", str(sdists[-1])], cwd=ROOT, env=r.env(), capture_output=True, text=True
    )
    log(f"llama.cpp's converter: {(got.stdout + got.stderr).strip()[-300:]}")
    r.steps.append(
        (
            f"install llama.cpp's converter ({sdists[-1].name})",
            f"rc {got.returncode}, {time.monotonic() - t0:.0f} s",
        )
    )


def git_repo(r: Run) -> None:
    """dvc needs a git repository; the call's copy of the working tree has none."""
    if (ROOT / ".git").exists():
        return
    if shutil.which("git") is None:  # pygit2 comes with dvc
        code = (
            "import pygit2\nrepo = pygit2.init_repository('.')\nrepo.index.add_all()\nrepo.index.write()\n"
            "sig = pygit2.Signature('genz-speak', 'genz-speak@localhost')\n"
            "repo.create_commit('HEAD', sig, sig, 'device snapshot', repo.index.write_tree(), [])"
        )
        subprocess.run([r.python, "-c", code], cwd=ROOT, env=r.env(), check=True)
        identity = "import pygit2\nc = pygit2.Repository('.').config\n"
        identity += "c['user.name'] = 'genz-speak'\nc['user.email'] = 'genz-speak@localhost'"
        subprocess.run([r.python, "-c", identity], cwd=ROOT, env=r.env(), check=True)  # dvc exp commits
        return
    who = ["-c", "user.name=genz-speak", "-c", "user.email=genz-speak@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], [*who, "commit", "-qm", "device snapshot"]):
        subprocess.run(["git", *cmd], cwd=ROOT, check=True)
    for key, value in (("user.name", "genz-speak"), ("user.email", "genz-speak@localhost")):
        subprocess.run(["git", "config", key, value], cwd=ROOT, check=True)  # dvc exp commits


def apply_profile(r: Run) -> bool:
    """The --profile onto params.yaml; False when it failed."""
    profile = r.args.profile
    if (ROOT / "configs" / f"{profile}.yaml").is_file():
        return not r.step(
            f"genz-speak profile {profile}",
            [r.python, "-m", "genz_speak.cli", "profile", profile],
            "pipeline.log",
            cap=120,
        )
    if Path(profile).is_file():
        shutil.copy(profile, ROOT / "params.yaml")  # a whole params file
    elif profile != "none":
        r.steps.append(("profile", f"failed: {profile} is neither configs/{profile}.yaml nor a params file"))
        return False
    return True


def task_pipeline(r: Run) -> None:
    """Apply the profile, then `dvc repro`, every line timed; keep the merged model for a later `vllm`."""
    git_repo(r)
    if not apply_profile(r):
        return
    repro = ["dvc", "repro", *shlex.split(r.args.repro_args)]
    r.step(
        shlex.join(repro),
        [r.python, "-m", *repro],
        "pipeline.log",
        on_line=lambda line: (m := STAGE_LINE.match(line)) and r.stages.append((time.time(), m[1])),
    )
    r.repro_end = time.time()
    if (ROOT / "models/merge/config.json").is_file():
        shutil.rmtree(r.work / "merge", ignore_errors=True)
        shutil.copytree(ROOT / "models/merge", r.work / "merge")


def task_tests(r: Run) -> None:
    """The GPU tests. transformers first and alone: Unsloth, once imported, patches transformers for the
    process (the isolation test skips its transformers case then)."""
    pytest = [r.python, "-m", "pytest", "-rA", "-p", "no:cacheprovider"]
    r.step(
        "tests: packed-row isolation, transformers + peft + bnb",
        [
            *pytest,
            "tests/gpu/test_packed_isolation.py",
            "-k",
            "transformers",
            f"--junitxml={r.work / 'junit-transformers.xml'}",
        ],
        "tests.log",
        cap=180,
    )
    r.step(
        "tests: pytest -m gpu tests/gpu (the rest)",
        [
            *pytest,
            "-m",
            "gpu",
            "tests/gpu",
            "-k",
            "not transformers_peft_bnb",
            f"--junitxml={r.work / 'junit-gpu.xml'}",
        ],
        "tests.log",
    )


def grid_points(spec: str) -> list[list[str]]:
    """'a=1,2 b=x,y' -> every combination, as `-S key=value` lists."""
    axes = [(key, values.split(",")) for key, _, values in (word.partition("=") for word in spec.split())]
    points: list[list[str]] = [[]]
    for key, values in axes:
        points = [[*p, f"{key}={v}"] for p in points for v in values]
    return points


def task_grid(r: Run) -> None:
    """A queued `dvc exp` grid over --grid (every combination), run --grid-jobs at a time: the profile
    applied (unless a pipeline task already did in this call), prepare and generate reproduced once in the
    workspace (each experiment then restores them from the cache), then `dvc exp run --queue -S ...
    evaluate` per point and `dvc exp run --run-all -j N`. Back in $OUT: grid.json (`dvc exp show --json`)."""
    git_repo(r)
    if not any(name.startswith("dvc repro") for name, _ in r.steps) and not apply_profile(r):
        return
    dvc = [r.python, "-m", "dvc"]
    if r.step("grid: dvc repro generate", [*dvc, "repro", "generate"], "grid.log"):
        return
    for point in grid_points(r.args.grid):
        name = "-".join(p.split(".")[-1].replace("learning_rate", "lr").replace("=", "") for p in point)
        sets = [arg for p in point for arg in ("-S", p)]
        if r.step(
            f"grid: queue {name}", [*dvc, "exp", "run", "--queue", "-n", name, *sets, "evaluate"], "grid.log"
        ):
            return
    r.step(
        f"grid: dvc exp run --run-all -j {r.args.grid_jobs}",
        [*dvc, "exp", "run", "--run-all", "-j", str(r.args.grid_jobs)],
        "grid.log",
    )
    shown = subprocess.run(
        [*dvc, "exp", "show", "--json"], cwd=ROOT, env=r.env(), capture_output=True, text=True
    )
    (r.out / "grid.json").write_text(shown.stdout or shown.stderr)


def task_bench(r: Run) -> None:
    args = shlex.split(r.args.bench_args)
    if "--timeout" not in args:  # each (model, backend) process; the step itself stops at the budget
        args += ["--timeout", str(max(r.left() - RESERVE - 30, 30))]
    r.step(
        "bench: benchmarks/train_throughput.py",
        [
            r.python,
            "benchmarks/train_throughput.py",
            *args,
            "--workdir",
            str(r.work / "bench"),
            "--json",
            str(r.work / "bench.json"),
        ],
        "bench.log",
    )


def task_vllm(r: Run) -> None:
    """scripts/check_vllm.py: `vllm serve` on the merged model, one chat completion."""
    if r.vllm_install is not None:
        log("vllm: waiting for its install")
        rc = r.vllm_install.wait(timeout=max(r.left() - RESERVE, 1))
        r.steps.append(("install the vllm bundle (in the background)", f"rc {rc}"))
        r.vllm_install = None
    if not (r.work / "vllm/.bundle-sha256").is_file():
        r.steps.append(("vllm", f"failed: vLLM did not install ({r.work / 'vllm-install.log'})"))
        return
    model = r.args.model or next(
        (m for m in (ROOT / "models/merge", r.work / "merge") if (m / "config.json").is_file()), None
    )
    if model is None:
        r.steps.append(("vllm", "skipped: no merged model (run the pipeline task first)"))
        return
    r.step(
        f"vllm: scripts/check_vllm.py {model}",
        [r.python, "scripts/check_vllm.py", str(model), "--timeout", str(max(r.left() - RESERVE - 60, 30))],
        "vllm.log",
        target="vllm",
    )


def task_cmd(r: Run, command: str) -> None:
    r.step(f"cmd: {command}", ["bash", "-c", command], "cmd.log")


def parse_tasks(words: list[str]) -> list[tuple[str, str]]:
    tasks, it = [], iter(words)
    for word in it:
        if word not in MIN_SECONDS:
            sys.exit(f"unknown task {word!r}: pipeline, tests, bench, grid, vllm, cmd 'COMMAND'")
        tasks.append((word, next(it, "") if word == "cmd" else ""))
        if word == "cmd" and not tasks[-1][1]:
            sys.exit("cmd needs a command: cmd 'COMMAND'")
    return tasks


def run(args: argparse.Namespace) -> int:
    """Install, then each task in order while the budget allows it; then the summary."""
    tasks = parse_tasks(args.tasks)
    names = [name for name, _ in tasks]
    r = Run(args)
    r.out.mkdir(parents=True, exist_ok=True)
    r.work.mkdir(parents=True, exist_ok=True)
    log(f"{KIT} run {shlex.join(args.tasks)}: {args.budget} s budget, work in {r.work}, results in {r.out}")
    install(r, "site")
    if "vllm" in names:  # beside the first tasks, in its own target
        cuda = [r.python, "-c", "import torch; assert torch.cuda.is_available()"]
        why = (
            "skipped: no CUDA here"
            if subprocess.run(cuda, capture_output=True).returncode
            else None
            if manifest(args.stash, "vllm") or (r.work / "vllm/.bundle-sha256").is_file()
            else f"failed: no vllm bundle in {args.stash} (`{KIT} prep --vllm`, and its pieces stashed)"
        )
        if why:
            tasks = [t for t in tasks if t[0] != "vllm"]
            r.steps.append(("vllm", why))
        else:
            r.vllm_install = install(r, "vllm", background=True)
    stage_python_wrapper(r)
    install_converter(r)
    for name, command in tasks:
        if r.left() - RESERVE < MIN_SECONDS[name]:
            again = f"{KIT} run {name}" + (f" {shlex.quote(command)}" if command else "")
            short = f"{r.left()} s left, {RESERVE} of them kept for the summary; it needs {MIN_SECONDS[name]}"
            r.steps.append((f"{name} {command}".strip(), f"left for a call of its own ({short}): `{again}`"))
            continue
        if name == "cmd":
            task_cmd(r, command)
        else:
            tasks_by_name = {
                "pipeline": task_pipeline,
                "tests": task_tests,
                "bench": task_bench,
                "grid": task_grid,
                "vllm": task_vllm,
            }
            tasks_by_name[name](r)
    if r.vllm_install is not None:  # vllm was left for a later call: let its install finish if it can
        try:
            r.vllm_install.wait(timeout=max(r.left(), 5))
        except subprocess.TimeoutExpired:
            r.vllm_install.kill()
    report.collect(r, names)
    ok = ("rc 0,", "skipped", "left for")
    return 0 if all(res.startswith(ok) for _, res in r.steps) else 1
