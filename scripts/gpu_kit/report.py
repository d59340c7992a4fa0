"""What a `run` brings back: $OUT/summary.md (versions, steps, stage times, metrics, each task's key lines),
metrics.json (all of it), artifacts.tar.gz (the evaluation report, samples, dvc.lock, params.yaml, junit
files) beside the tasks' logs: at most 8 files, as a call brings back."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from device import Run

ROOT = Path(__file__).resolve().parents[2]
KIT = "bash scripts/gpu_kit.sh"


def versions(r: Run) -> dict[str, str]:
    """The GPU and genz_speak's own record of the training libraries (what metrics/train.json keeps), as the
    stages' interpreter sees them."""
    found: dict[str, str] = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        found["gpu"] = subprocess.run(q, capture_output=True, text=True).stdout.strip()
    code = (
        "import json, sys\nfrom genz_speak.training.sft import library_versions\n"
        "print(json.dumps({'python': sys.version.split()[0], **library_versions('unsloth', True)}))"
    )
    got = subprocess.run(
        [str(r.work / "bin/python"), "-c", code], cwd=ROOT, env=r.env(), capture_output=True, text=True
    )
    try:
        found.update(json.loads(got.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        found["error"] = (got.stderr.strip().splitlines() or ["no output"])[-1]
    return found


def grep(path: Path, pattern: str, last: int = 40) -> list[str]:
    if not path.is_file():
        return []
    return [f"    {li}" for li in path.read_text(errors="replace").splitlines() if re.search(pattern, li)][
        -last:
    ]


def stage_table(r: Run) -> list[str]:
    """Each `Running stage` line starts a stage; the next one, or the end of dvc repro, ends it."""
    if not r.stages:
        return []
    rows = ["## dvc repro: stage times", "", "| stage | time |", "|---|---|"]
    ends = [t for t, _ in r.stages[1:]] + [r.repro_end]
    for (t, name), end in zip(r.stages, ends, strict=True):
        rows.append(f"| {name} | {int(end - t) // 60}:{int(end - t) % 60:02d} |")
    total = int(r.repro_end - r.stages[0][0])
    return [*rows, f"| **all stages** | **{total // 60}:{total % 60:02d}** |", ""]


def pipeline_results(r: Run) -> tuple[dict, list[str]]:
    """The metrics files this run wrote (for metrics.json), their top-level values and the export listing
    (summary). Files it did not write are git's copies, from another machine."""
    files = [
        *sorted((ROOT / "metrics").glob("*.json")),
        *sorted((ROOT / "metrics/run").glob("*.json")),  # how each run went: times, rates, memory
        ROOT / "dvclive/train/metrics.json",
    ]
    fresh = [f for f in files if f.is_file() and f.stat().st_mtime >= r.started]
    metrics = {str(f.relative_to(ROOT)): json.loads(f.read_text()) for f in fresh}
    lines = (
        ["## Metrics this run wrote (top-level values; all of them in metrics.json)", ""] if metrics else []
    )
    for name, d in metrics.items():
        flat = ", ".join(
            f"{k}={v}" for k, v in d.items() if not isinstance(v, dict | list) and "sha" not in k
        )
        lines.append(f"    {name}: {flat}")
    export = ROOT / "models/export"
    if export.is_dir():
        lines += ["", "## models/export", ""]
        lines += [f"    {f.stat().st_size:>12}  {f.name}" for f in sorted(export.iterdir()) if f.is_file()]
    return metrics, lines


def collect(r: Run, tasks: list[str]) -> None:
    """$OUT: summary.md, metrics.json, artifacts.tar.gz and the tasks' logs (at most 8 files)."""
    metrics, lines = pipeline_results(r) if "pipeline" in tasks else ({}, [])
    bench = json.loads((r.work / "bench.json").read_text()) if (r.work / "bench.json").is_file() else None
    vers = versions(r)
    (r.out / "metrics.json").write_text(
        json.dumps(
            {
                "versions": vers,
                "steps": [{"step": s, "result": res} for s, res in r.steps],
                "metrics": metrics,
                "bench": bench,
            },
            indent=1,
        )
    )
    keep = ["metrics/report.md", "dvclive/train/samples.jsonl", "dvc.lock", "params.yaml"]
    extra = [ROOT / f for f in keep if "pipeline" in tasks] + sorted(r.work.glob("junit-*.xml"))
    if extra := [f for f in extra if f.is_file()]:
        with tarfile.open(r.out / "artifacts.tar.gz", "w:gz") as t:
            for f in extra:
                t.add(f, arcname=f.name)
    summary = [f"# {KIT} run {' '.join(tasks)} ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)", ""]
    summary += [f"    {k}: {v}" for k, v in vers.items()] + ["", "| step | result |", "|---|---|"]
    summary += [f"| {name} | {result} |" for name, result in r.steps] + [""] + stage_table(r) + lines
    for name, pattern in (
        ("tests", r"^ISOLATION |^(PASSED|FAILED|SKIPPED|ERROR) |^=+ .*(passed|failed|error)"),
        ("bench", r"^\S+ (\| |GPU: )"),
        ("vllm", r"\$ |server ready|^\S+ (usage|user|assistant):|exited|did not answer|Error"),
        ("cmd", r"."),
    ):
        if found := grep(r.out / f"{name}.log", pattern, last=20 if name == "cmd" else 40):
            summary += ["", f"## {name} ({name}.log)", "", *found]
    summary += ["", f"Took {time.time() - r.started:.0f} s."]
    (r.out / "summary.md").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    if len(files := [f for f in r.out.rglob("*") if f.is_file()]) > 8:
        print(f"WARNING: {len(files)} files in {r.out}: only 8 come back")
