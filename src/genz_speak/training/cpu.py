"""CPU training precision: bf16 where the CPU multiplies bf16 in hardware (AMX or AVX512-BF16), fp32
elsewhere, where bf16 is emulated and slower than fp32; and the kernel the matrix multiplies run on, read
from oneDNN's own log rather than assumed."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]

# A bf16 matrix multiply as training runs them (SmolLM2-135M's MLP shape); oneDNN logs the kernel it ran.
_PROBE = (
    "import torch; a = torch.ones(64, 576, dtype=torch.bfloat16); "
    "torch.nn.functional.linear(a, torch.ones(1536, 576, dtype=torch.bfloat16))"
)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def bf16_isa(flags: set[str] | None = None) -> str | None:
    """The instructions that multiply bf16 here: "AMX-BF16", "AVX512-BF16", or None (bf16 emulated)."""
    flags = cpu_flags() if flags is None else flags
    if not flags:  # no /proc/cpuinfo (macOS, Windows): torch's own checks
        import torch

        checks = torch.cpu
        if getattr(checks, "_is_amx_tile_supported", lambda: False)():
            return "AMX-BF16"
        return "AVX512-BF16" if getattr(checks, "_is_avx512_bf16_supported", lambda: False)() else None
    if "amx_bf16" in flags:
        return "AMX-BF16"
    return "AVX512-BF16" if "avx512_bf16" in flags else None


def resolve_precision(setting: Literal["auto", "fp32", "bf16"], isa: str | None = None) -> Precision:
    """`train.cpu_precision` made concrete: auto takes bf16 only where the CPU has bf16 instructions."""
    isa = bf16_isa() if isa is None else isa
    if setting == "auto":
        return "bf16" if isa else "fp32"
    if setting == "bf16" and not isa:
        log.warning("train.cpu_precision: bf16 without AMX or AVX512-BF16 is emulated, slower than fp32")
    return setting


@cache
def onednn_matmul_kernel() -> str | None:
    """The implementation oneDNN runs a bf16 matrix multiply with here (e.g. brg_matmul:avx10_1_512_amx),
    from its verbose log; None if it logged none. A fresh interpreter, because ONEDNN_VERBOSE is read once
    per process and logs to the process's stdout."""
    import os

    env = {**os.environ, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": "1"}
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("could not ask oneDNN which kernel it runs: %s", err)
        return None
    found = re.search(r"^onednn_verbose,(?:[^,]*,)*?exec,cpu,matmul,([^,]+),", out, re.MULTILINE)
    return found.group(1) if found else None


def kernel_path(precision: Precision) -> str:
    """What computed the training step's matrix multiplies, for metrics/train.json."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if precision == "fp32":
        blas = "MKL" if torch.backends.mkl.is_available() else "BLAS"
        return f"fp32, {blas} sgemm ({capability})"
    kernel = onednn_matmul_kernel()
    where = f"oneDNN {kernel}" if kernel else f"no oneDNN kernel logged ({capability})"
    return f"bf16 autocast, bf16 base weights, fp32 LoRA weights; {where}"
