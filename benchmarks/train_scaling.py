"""Data-parallel scaling of the train stage: 1 vs N processes at the same rows per optimizer step.

    python benchmarks/train_scaling.py --backends unsloth transformers --processes 1 2

Runs the train stage itself (stages/train.py, as dvc.yaml runs it, so `train.num_processes` launches
the processes through accelerate) on a TinyLlama-shaped Llama (random weights from a config; see
train_throughput.py), 4-bit QLoRA with adamw_8bit and gradient checkpointing, 16 rows per optimizer step:
micro-batch 8 per process, accumulation 2 on one process and 1 on two. Every row is max_seq_length
tokens long (long rows cut to length), so every step holds the same tokens. Per run: tokens/s over the
second half of the steps (`tokens_per_s_steady`, past Unsloth's warm-up), the loss at every step, and the
adapter's digest that every rank had to agree on. Prints a table: speed-up over one process and the
largest loss difference at any step.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_throughput import tinyllama_dir  # noqa: E402  (a sibling script, not a package)

WORDS = [
    "vibe",
    "slay",
    "lowkey",
    "highkey",
    "fr",
    "ngl",
    "bet",
    "cap",
    "rizz",
    "bussin",
    "mid",
    "based",
    "iykyk",
    "delulu",
    "yap",
    "era",
    "aura",
]


def dataset(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` training rows whose answers run past 1024 tokens (cut to max_seq_length by the stage)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(rows):
            answer = " ".join(rng.choice(WORDS) for _ in range(1400))
            row = {
                "id": f"row-{i}",
                "split": "train",
                "category": "open_qa",
                "instruction": f"Question {i}: what is the vibe?",
                "context": "",
                "source_response": "A plain answer.",
                "output": answer,
            }
            f.write(json.dumps(row) + "\n")


def params(backend: str, processes: int, steps: int, seq: int, accum: int = 2) -> dict[str, Any]:
    from genz_speak.profiles import apply

    p = yaml.safe_load(apply(ROOT / "configs/gpu-recipe.yaml", ROOT / "params.yaml")[0])
    p["train"].update(
        backend=backend,
        num_processes=processes,
        max_seq_length=seq,
        batch_size=16 // accum,
        gradient_accumulation_steps=accum,  # 16 rows per optimizer step, however many processes
        micro_batch=None,
        group_by_length=False,
        pad_to_multiple_of=None,
        padding_free=False,
        max_steps=steps,
        logging_steps=1,
        eval_steps=None,
        resume=False,
    )
    return p


def run(
    work: Path, base: Path, backend: str, processes: int, args: argparse.Namespace, accum: int = 2
) -> dict[str, Any]:
    name = f"{backend}-{processes}" + ("" if accum == 2 else f"-accum{accum}")
    cfg = params(backend, processes, args.steps, args.max_seq_length, accum)
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    out = work / name
    cmd = [
        sys.executable, str(ROOT / "stages/train.py"), "--params", str(work / f"{name}.yaml"),
        "--dataset", str(work / "dataset.jsonl"), "--base", str(base), "--out", str(out / "adapter"),
        "--live-dir", str(out / "live"), "--metrics", str(out / "train.json"),
        "--run-info", str(out / "run.json"), "--work-dir", str(out / "work"),
    ]  # fmt: skip
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = -1, (exc.stderr or b"").decode(errors="replace") + f"\ntimed out after {args.timeout:.0f} s"
    (work / f"{name}.log").write_text(err)
    if rc != 0:
        return {"backend": backend, "processes": processes, "error": err.strip().splitlines()[-1][:300]}
    m = {**json.loads((out / "train.json").read_text()), **json.loads((out / "run.json").read_text())}
    loss = [line.split("\t") for line in (out / "live/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    return {
        "backend": backend,
        "processes": processes,
        "stage_s": round(time.perf_counter() - start, 1),
        "micro_batch": m["micro_batch"],
        "accum": m["gradient_accumulation_steps"],
        "rows_per_step": m["rows_per_step"],
        "steps": m["steps"],
        "tokens": m["tokens"],
        "tokens_per_s": m["tokens_per_s"],
        "tokens_per_s_steady": m["tokens_per_s_steady"],
        "peak_memory_mb": m["peak_memory_mb"],
        "adapter_sha256": m["adapter_sha256"][:16],
        "adapter_ranks_checked": m["adapter_ranks_checked"],
        "loss": {int(step): float(value) for step, value in loss},
    }


def print_table(results: list[dict[str, Any]]) -> None:
    one = {r["backend"]: r for r in results if r["processes"] == 1 and r.get("accum") == 2}
    print(
        "\n| backend | processes | micro x accum x processes | steady tok/s | x 1 process | overall tok/s "
        "| max abs loss diff | max rel loss diff | peak MiB / process | ranks agreeing |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['backend']} | {r['processes']} | error: {r['error']} ||||||||")
            continue
        ref = one.get(r["backend"])
        ratio = r["tokens_per_s_steady"] / ref["tokens_per_s_steady"] if ref else float("nan")
        pairs = [(v, ref["loss"][s]) for s, v in r["loss"].items() if ref and s in ref["loss"]]
        diffs = [abs(v - w) for v, w in pairs]
        rel = [abs(v - w) / abs(w) for v, w in pairs]
        print(
            f"| {r['backend']} | {r['processes']} | {r['micro_batch']} x {r['accum']} x {r['processes']} | "
            f"{r['tokens_per_s_steady']:,.0f} | {ratio:.2f} | {r['tokens_per_s']:,.0f} | "
            f"{max(diffs, default=0):.4f} | {max(rel, default=0):.2%} | {r['peak_memory_mb']:,.0f} | "
            f"{r['adapter_ranks_checked']} ({r['adapter_sha256']}) |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["unsloth", "transformers"])
    p.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    p.add_argument("--max-seq-length", type=int, default=1024, help="tokens per row")
    p.add_argument("--base", type=Path, help="a model folder instead of the TinyLlama-shaped one")
    p.add_argument(
        "--control",
        action="store_true",
        help="also one process at micro-batch 16 without accumulation (what accumulation itself costs)",
    )
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "genz-bench")
    p.add_argument("--json", type=Path, help="also write the results (with every step's loss) here")
    args = p.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    base = args.base or tinyllama_dir(args.workdir)
    dataset(args.workdir / "dataset.jsonl", rows=16 * args.steps)
    results = []
    for backend in args.backends:
        for processes in args.processes:
            r = run(args.workdir, base, backend, processes, args)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "loss"}), flush=True)
        if args.control:
            results.append(run(args.workdir, base, backend, 1, args, accum=1))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "loss"}), flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
