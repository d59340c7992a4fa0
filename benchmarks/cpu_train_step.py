"""CPU training step: a bare peft LoRA step beside the pipeline's trainer step, fp32 vs bf16, before vs
after, in one run on one machine. Prints a table (and, with --profile, where a case's time goes).

    python benchmarks/cpu_train_step.py                              # every case, models/prepare
    python benchmarks/cpu_train_step.py --cases bare-bf16 pipeline-bf16 --steps 6
    python benchmarks/cpu_train_step.py --profile trl-fp32          # torch.profiler's top ops of a case
    python benchmarks/cpu_train_step.py --model DIR --dataset FILE   # another base model or dataset

Cases, each in its own process (its peak RSS is its own; no autocast or thread setting leaks across):
- bare-*: the least a LoRA step can be, to compare against: peft LoRA (rank 16, alpha 32, every linear
  layer of the base), the model's own forward with labels (full logits), backward, AdamW; `bare-fp32`,
  `bare-bf16-autocast` (fp32 weights under bf16 autocast), `bare-bf16` (bf16 base, fp32 LoRA, autocast);
- trl-* and pipeline-*: the project's own `build_trainer` (TRL's SFTTrainer, completion-only loss) on the
  same shapes: `trl-*` with TRL's loss (the stage before issue 26: every position through the fused LM
  head, with entropy and top-1 accuracy), `pipeline-*` with the project's loss (trained positions only);
- real-before and real-after: the train stage's trainer on the dataset's own training rows, batches as
  the stage makes them: `real-before` as it ran before issue 26 (fp32, TRL's loss, random batches padded
  to the longest row), `real-after` with params.yaml's train settings (`real-after-fp32` the same in fp32:
  what a CPU without bf16 instructions gets).

Shapes of the bare, trl and pipeline cases: --rows rows x --seq tokens per step (8 x 256), random ids,
the first 40% of each row masked as the prompt. Tokens/s = tokens fed to the model (padding excluded)
over the timed steps' own time, after --warmup steps; tokens per CPU-second divides by the CPU time the
process spent instead (with --threads 1, a measure of work that a busy machine disturbs less); peak RSS of
the case's process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BARE = {"bare-fp32": "fp32", "bare-bf16-autocast": "autocast", "bare-bf16": "bf16"}
SHAPED = {"trl-fp32", "trl-bf16", "pipeline-fp32", "pipeline-bf16"}
REAL = {"real-before", "real-after", "real-after-fp32"}
CASES = [*BARE, "trl-fp32", "trl-bf16", "pipeline-fp32", "pipeline-bf16", "real-before", "real-after"]


def bare_case(args: argparse.Namespace, mode: str, profile: bool) -> dict[str, Any]:
    """A LoRA step with nothing around it: forward with labels, backward, AdamW."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)  # LoRA weights in fp32 whatever the base (peft's default upcast)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def step() -> None:
        ids = torch.randint(100, vocab - 1, (args.rows, args.seq), generator=gen)
        labels = ids.clone()
        labels[:, : int(args.seq * 0.4)] = -100
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times, cpu = [], []
    with _profiler(profile) as prof:
        for i in range(args.warmup + args.steps):
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            prof.step()
    tokens = args.rows * args.seq * args.steps
    return {"tokens": tokens, "seconds": sum(times), "cpu_seconds": sum(cpu), "profile": _table(prof)}


def shaped_rows(args: argparse.Namespace, vocab: int) -> list[dict[str, list[int]]]:
    import random

    rng = random.Random(0)
    prompt = int(args.seq * 0.4)
    n = args.rows * (args.warmup + args.steps)
    return [
        {
            "input_ids": [rng.randrange(100, vocab - 1) for _ in range(args.seq)],
            "completion_mask": [0] * prompt + [1] * (args.seq - prompt),
        }
        for _ in range(n)
    ]


def trainer_case(args: argparse.Namespace, case: str, profile: bool) -> dict[str, Any]:
    """The project's trainer, a step as the train stage takes it."""
    from datasets import Dataset

    from genz_speak.data.chat import prompt_completion
    from genz_speak.data.dataset import read_dataset
    from genz_speak.training import backends, callbacks
    from genz_speak.training.sft import build_trainer

    cfg = _case_config(case, args)
    prepared = backends.load("transformers", Path(args.model), cfg)
    if case in REAL:
        rows = [prompt_completion(r) for r in read_dataset(Path(args.dataset)) if r["split"] == "train"]
    else:
        rows = shaped_rows(args, prepared.model.config.vocab_size)
    trainer, _, _ = build_trainer(
        cfg, "transformers", prepared, Dataset.from_list(rows), None, ROOT / ".cache" / "bench-train", [],
        trl_loss=case.startswith("trl") or case == "real-before",
    )  # fmt: skip
    clock = callbacks.step_clock(lambda: int(getattr(trainer, "_total_train_tokens", 0)))
    trainer.add_callback(clock)
    with _profiler(profile) as prof:
        step = _ProfilerStep(prof)
        trainer.add_callback(step)
        trainer.train()
    timed = slice(args.warmup, None)
    return {
        "tokens": sum(clock.tokens[timed]),
        "seconds": sum(clock.durations[timed]),
        "cpu_seconds": sum(step.cpu[timed]),
        "precision": prepared.precision,
        "padding": _padding(trainer, args),
        "profile": _table(prof),
    }


def _case_config(case: str, args: argparse.Namespace) -> Any:
    """The TrainConfig of a trainer case: params.yaml's train section for real-after, else the stage's
    settings before issue 26 (#16's CPU default: fp32, random batches padded to the longest row)."""
    from genz_speak.config import TrainConfig
    from genz_speak.params import load_params

    if case.startswith("real-after"):
        cfg = replace(load_params(ROOT / "params.yaml").train, **dict(_setting(kv) for kv in args.train))
        cfg = replace(cfg, cpu_precision="fp32") if case == "real-after-fp32" else cfg
    else:
        cfg = replace(
            TrainConfig(),
            learning_rate=5e-4,
            group_by_length=False,
            padding_free=None,
            pad_to_multiple_of=None,
            cpu_precision="bf16" if case.endswith("bf16") else "fp32",
        )
        cfg = cfg if case in REAL else replace(cfg, batch_size=args.rows, max_seq_length=args.seq)
    return replace(
        cfg,
        backend="transformers",
        gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps,
        logging_steps=10**6,
        cpu_threads=args.threads,
        sample_questions=0,
        resume=False,
    )


def _setting(text: str) -> tuple[str, Any]:
    import yaml

    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def _padding(trainer: Any, args: argparse.Namespace) -> float | None:
    """The share of pad tokens in the case's batches (the first warmup + steps of them)."""
    real = padded = 0
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i >= args.warmup + args.steps:
            break
        mask = batch.get("attention_mask")
        ids = batch["input_ids"]
        real += int(mask.sum()) if mask is not None else ids.shape[1]
        padded += ids.numel()
    return round(1 - real / padded, 3) if padded else None


class _NoProfile:
    def step(self) -> None:
        pass

    def __enter__(self) -> _NoProfile:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _profiler(on: bool) -> Any:
    if not on:
        return _NoProfile()
    from torch.profiler import ProfilerActivity, profile, schedule

    steps = int(os.environ["BENCH_STEPS"])
    warmup = int(os.environ["BENCH_WARMUP"])
    return profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=warmup, warmup=0, active=steps))


def _ProfilerStep(prof: Any) -> Any:
    from transformers import TrainerCallback

    class Step(TrainerCallback):
        """Steps the profiler, and times each step in CPU seconds of this process (all its threads)."""

        def __init__(self) -> None:
            self.cpu: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.cpu.append(time.process_time() - self._start)
            prof.step()

    return Step()


def _table(prof: Any) -> str | None:
    if isinstance(prof, _NoProfile):
        return None
    return str(
        prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
    )


def run_case(args: argparse.Namespace) -> None:
    """One case in this process: its result as one JSON line on stdout."""
    import torch

    torch.set_num_threads(args.threads)
    case = args.run_case
    profile = case == args.profile
    result = bare_case(args, BARE[case], profile) if case in BARE else trainer_case(args, case, profile)
    result |= {"case": case, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("RESULT " + json.dumps(result))


def spawn(args: argparse.Namespace, case: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--run-case", case, *_forwarded(args)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env |= {"BENCH_STEPS": str(args.steps), "BENCH_WARMUP": str(args.warmup)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--model", str(args.model), "--dataset", str(args.dataset), "--rows", str(args.rows)]
    out += ["--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out += ["--threads", str(args.threads)] + (["--profile", args.profile] if args.profile else [])
    out += ["--train", *args.train] if args.train else []
    return out


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from genz_speak.training.cpu import bf16_isa, kernel_path

    bare = next((r for r in results if r["case"] == "bare-bf16"), None)
    print(f"\nCPU: {bf16_isa() or 'no bf16 instructions'}; bf16 path: {kernel_path('bf16')}")
    print(f"threads {args.threads}; load average before/after: {args.load_before} / {os.getloadavg()}")
    print(
        f"shapes: {args.rows} x {args.seq} tokens per step (bare, trl, pipeline); {args.steps} timed steps\n"
    )
    print("| case | tokens/s | s/step | × bare-bf16 | tokens per CPU-s | padding | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        rate = r["tokens"] / r["seconds"]
        ratio = f"{rate / (bare['tokens'] / bare['seconds']):.2f}" if bare else "–"
        padding = f"{r['padding']:.0%}" if r.get("padding") is not None else "–"
        print(
            f"| {r['case']} | {rate:.0f} | {r['seconds'] / args.steps:.2f} | {ratio} "
            f"| {r['tokens'] / r['cpu_seconds']:.0f} | {padding} | {r['peak_rss_mb']:.0f} |"
        )
    for r in results:
        if r.get("profile"):
            print(f"\nProfile of {r['case']} ({args.steps} steps, self CPU time):\n{r['profile']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=CASES, choices=[*BARE, *SHAPED, *REAL])
    p.add_argument("--model", type=Path, default=ROOT / "models/prepare")
    p.add_argument("--dataset", type=Path, default=ROOT / "data/generate/genz_dataset.jsonl")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train", nargs="*", default=[], help="KEY=VALUE train settings for real-after*")
    p.add_argument("--profile", choices=[*BARE, *SHAPED, *REAL], help="print torch.profiler's top ops of it")
    p.add_argument("--run-case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_case:
        run_case(args)
        return
    args.load_before = os.getloadavg()
    cases = list(dict.fromkeys([*args.cases, *([args.profile] if args.profile else [])]))
    results = []
    for case in cases:
        results.append(spawn(args, case))
        print(f"{case}: {results[-1]['tokens'] / results[-1]['seconds']:.0f} tokens/s", file=sys.stderr)
    report(results, args)


if __name__ == "__main__":
    main()
