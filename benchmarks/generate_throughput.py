"""Generate-stage throughput: the openai teacher's concurrency and replicas, vLLM vs transformers. Tables.

    python benchmarks/generate_throughput.py concurrency             # CPU is fine: a local server
    python benchmarks/generate_throughput.py replicas                # CPU is fine: local servers
    python benchmarks/generate_throughput.py replicas --model models/merge --rows 24
    python benchmarks/generate_throughput.py engines --model DIR     # GPU: vllm vs transformers teachers

`concurrency` starts `genz-speak serve rules --latency S` (no weights: every answer costs a fixed latency,
like a remote API) and runs the stage's own `rewrite_splits()` with the openai teacher at each concurrency,
on fresh caches; rows/s and the ratio to concurrency 1. `engines` runs `rewrite_splits()` with the `vllm` and
the `transformers` teacher on the same source rows (the project's questions, repeated with distinct ids
up to --rows) and the same sampling; it reports the teacher's start-up, the stage's generate wall time,
output tokens/s and rows/s, and the ratio of each, end to end included. `replicas` starts N servers of
one model and runs `rewrite_splits()` with `base_urls` = the first 1, 2, ... of them (concurrency per endpoint
= a server's capacity): either `genz-speak serve rules --latency S --max-concurrent C` (each replica
answers C requests at a time, like a GPU server's batch) or a model folder (one request at a time, one
CPU thread per replica); rows/s and the ratio to one replica.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from genz_speak.config import GenerateConfig, SamplingConfig
from genz_speak.data.questions import validate_rows
from genz_speak.io import read_jsonl
from genz_speak.pipeline.generate import rewrite_splits
from genz_speak.teachers import build_teacher
from genz_speak.testing.serve import launch

ROOT = Path(__file__).resolve().parents[1]


def source_rows(n: int) -> list[dict[str, Any]]:
    """`n` source rows: the project's questions in turn, each copy with its own id (no cache sharing)."""
    base = validate_rows(read_jsonl(ROOT / "data/questions.jsonl"), "data/questions.jsonl")
    return [{**base[i % len(base)], "id": f"{base[i % len(base)]['id']}-{i}"} for i in range(n)]


def timed_generate(cfg: GenerateConfig, rows: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    start = time.perf_counter()
    teacher = build_teacher(cfg)
    ready = time.perf_counter()
    metrics = rewrite_splits(cfg, {"train": rows}, teacher, work / "out", work / "cache.jsonl")
    end = time.perf_counter()
    dataset = read_jsonl(work / "out/genz_dataset.jsonl")
    return {
        "startup_s": round(ready - start, 1),
        "generate_s": round(end - ready, 2),
        "end_to_end_s": round(end - start, 1),
        "rows_ok": metrics["rows"],
        "rejected": metrics["rejected"],
        "tokens_out": metrics["run"]["tokens_out"],
        "rows_per_s": round(len(rows) / (end - ready), 2),
        "tokens_per_s": round(metrics["run"]["tokens_out"] / (end - ready), 1),
        "samples": [{"source": d["source_response"][:200], "output": d["output"][:300]} for d in dataset[:3]],
    }


def concurrency(args: argparse.Namespace) -> None:
    proc, url = launch("rules", "--latency", str(args.latency))
    try:
        results = []
        for c in args.levels:
            cfg = GenerateConfig(
                teacher="openai", model="rules", base_url=url, concurrency=c, max_reject_fraction=1.0
            )
            with tempfile.TemporaryDirectory() as work:
                r = timed_generate(cfg, source_rows(args.rows), Path(work))
            results.append({"concurrency": c, **r})
            print(json.dumps({k: v for k, v in results[-1].items() if k != "samples"}), flush=True)
    finally:
        proc.terminate()
    base = results[0]["rows_per_s"]
    print(f"\nopenai teacher vs `genz-speak serve rules --latency {args.latency}`, {args.rows} rows each")
    print("| concurrency | wall (s) | rows/s | x concurrency 1 | rows ok |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['concurrency']} | {r['generate_s']} | {r['rows_per_s']} | "
            f"{r['rows_per_s'] / base:.1f} | {r['rows_ok']} |"
        )
    _dump(args, results)


def replicas(args: argparse.Namespace) -> None:
    rules = str(args.model) == "rules"
    options = ["--latency", str(args.latency), "--max-concurrent", str(args.capacity)] if rules else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    servers = [launch(args.model, *options, env=env, timeout=600) for _ in range(max(args.replicas))]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens, seed=0)
    results = []
    try:
        for n in args.replicas:
            cfg = GenerateConfig(
                teacher="openai",
                model="replica",
                base_urls=tuple(url for _, url in servers[:n]),
                concurrency=args.capacity,
                sampling=sampling,
                request_timeout=600.0,
                max_reject_fraction=1.0,
            )
            with tempfile.TemporaryDirectory() as work:
                r = timed_generate(cfg, source_rows(args.rows), Path(work))
            results.append({"replicas": n, **r})
            print(json.dumps({k: v for k, v in results[-1].items() if k != "samples"}), flush=True)
    finally:
        for proc, _ in servers:
            proc.terminate()
    base = results[0]["rows_per_s"]
    what = f"rules --latency {args.latency} --max-concurrent {args.capacity}" if rules else str(args.model)
    print(f"\nopenai teacher over `genz-speak serve {what}` replicas, {args.rows} rows each")
    print("| replicas | wall (s) | rows/s | x 1 replica | rows ok |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['replicas']} | {r['generate_s']} | {r['rows_per_s']} | {r['rows_per_s'] / base:.2f} | "
            f"{r['rows_ok']} |"
        )
    _dump(args, results)


def engines(args: argparse.Namespace) -> None:
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    base = GenerateConfig(model=str(args.model), sampling=sampling, max_reject_fraction=1.0)
    results = []
    for engine in args.engines:
        batch = args.rows if engine == "vllm" else args.hf_batch  # vLLM schedules the whole set itself
        cfg = replace(base, teacher=engine, batch_size=batch)
        if engine == "vllm" and args.attention_backend:
            cfg = replace(cfg, vllm=replace(cfg.vllm, attention_backend=args.attention_backend))
        with tempfile.TemporaryDirectory() as work:
            r = timed_generate(cfg, source_rows(args.rows), Path(work))
        results.append({"engine": engine, "batch": batch, **r})
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{args.rows} source rows, max_new_tokens {args.max_new_tokens}, model {args.model}")
    print("| teacher | start-up (s) | generate (s) | rows/s | out tok/s | end to end (s) | rows ok |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['engine']} (batch {r['batch']}) | {r['startup_s']} | {r['generate_s']} | "
            f"{r['rows_per_s']} | {r['tokens_per_s']:,.0f} | {r['end_to_end_s']} | {r['rows_ok']} |"
        )
    by = {r["engine"]: r for r in results}
    if {"vllm", "transformers"} <= by.keys():
        v, t = by["vllm"], by["transformers"]
        print(
            f"\nvllm / transformers: generate {t['generate_s'] / v['generate_s']:.1f}x, "
            f"out tok/s {v['tokens_per_s'] / t['tokens_per_s']:.1f}x, "
            f"end to end {t['end_to_end_s'] / v['end_to_end_s']:.1f}x"
        )
    _dump(args, results)


def _dump(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="also write the results here")
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("concurrency", help="openai teacher vs a fixed-latency local server")
    c.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    c.add_argument("--rows", type=int, default=128)
    c.add_argument("--latency", type=float, default=0.2, help="seconds per request at the server")
    r = sub.add_parser("replicas", help="openai teacher over 1..N local servers (generate.base_urls)")
    r.add_argument("--model", default="rules", help='"rules" (no weights) or a model folder to serve')
    r.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    r.add_argument("--rows", type=int, default=256)
    r.add_argument("--latency", type=float, default=0.2, help="rules: seconds per request at the server")
    r.add_argument("--capacity", type=int, default=4, help="requests a replica answers at once (rules)")
    r.add_argument("--threads", type=int, default=1, help="CPU threads per replica (model folders)")
    r.add_argument("--max-new-tokens", type=int, default=48, help="model folders: tokens per answer")
    e = sub.add_parser("engines", help="vllm vs transformers teachers (GPU)")
    e.add_argument("--model", type=Path, required=True, help="teacher model folder")
    e.add_argument("--engines", nargs="+", default=["vllm", "transformers"])
    e.add_argument("--rows", type=int, default=512)
    e.add_argument("--max-new-tokens", type=int, default=128)
    e.add_argument("--hf-batch", type=int, default=128, help="transformers teacher: prompts per generate")
    e.add_argument("--attention-backend", help="vllm attention backend, e.g. FLASH_ATTN")
    args = p.parse_args()
    {"concurrency": concurrency, "replicas": replicas, "engines": engines}[args.mode](args)


if __name__ == "__main__":
    main()
