"""Training throughput on instruction-like rows: backends x micro-batching x packing. Prints a table.

    python benchmarks/train_throughput.py                    # every case, each backend in its own process
    python benchmarks/train_throughput.py --models tinyllama --cases 8x1 packing packing-32 full-8x1
    python benchmarks/train_throughput.py --models tinyllama --backends unsloth --cases packing-32 \
        --train-rows 15000 --epochs 2                        # a whole training run, timed end to end

Cases (8 rows per optimizer step unless named otherwise; under packing a row is a packed sequence of up to
1,024 tokens holding several examples): 2x4 (the recipe), 8x1, auto (micro-batch auto, padding left to
the backend), auto-padfree (padding-free batches), grouped (length-grouped batches padded to multiples of
64), packing (TRL BFD packing: padding-free, rows isolated by varlen attention), packing-16 and packing-32
(16 or 32 packed sequences per step, micro-batch auto: the largest that fits), packing-wrapped (dense
1,024-token blocks, rows attend across boundaries), full-8x1 and full-32x1 (every row 1,024 tokens: the
ceiling).

Models: `tinyllama`, a TinyLlama-shaped Llama (22 layers, hidden 2048; the student's 49,152-token
vocabulary) with random weights from a config (no download), and `student`, the embedded
SmolLM2-135M-Instruct. Rows are pre-tokenized random ids with a log-normal length distribution (mean ~222
tokens, like instruction data), 60% of each row the response; `full` rows are all max_seq_length long (the
ceiling). Every case runs the project's own `build_trainer` (TRL SFTTrainer, 4-bit QLoRA, response-only
loss); each backend runs in its own process, so Unsloth's patches never reach the transformers backend.
Real tokens/s counts the non-padding tokens fed to the model. The kernel column says what computed
attention: genz_varlen's kernels (with call counts) or the implementation on the transformers backend,
and for Unsloth the packed-row path its dispatch enabled plus the calls its varlen and per-sequence SDPA
functions took.

With --train-rows N the cases instead train N rows for --epochs epochs through the same trainer (the
15,000 rows x 2 epochs goal): the table gives the wall time of `trainer.train()` and of the whole case
(model load and packing included).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

# name: TrainConfig fields (plus `full`: every row max_seq_length long, the ceiling). Rows per optimizer
# step are 8 in every case but packing, where they are 8 packed sequences of up to max_seq_length tokens.
CASES: dict[str, dict[str, Any]] = {
    "2x4": {"batch_size": 2, "gradient_accumulation_steps": 4, "padding_free": False},  # the recipe
    "8x1": {"batch_size": 8, "gradient_accumulation_steps": 1, "padding_free": False},
    # micro-batch auto, padding left to the backend (Unsloth: padding-free).
    "auto": {"batch_size": 2, "gradient_accumulation_steps": 4, "micro_batch": "auto"},
    "auto-padfree": {
        "batch_size": 2,
        "gradient_accumulation_steps": 4,
        "micro_batch": "auto",
        "padding_free": True,
    },
    "grouped": {
        "batch_size": 2,
        "gradient_accumulation_steps": 4,
        "micro_batch": "auto",
        "padding_free": False,
        "group_by_length": True,
        "pad_to_multiple_of": 64,
    },
    # The GPU profiles: bfd packing, 8 packed sequences per step, micro-batch auto.
    "packing": {"batch_size": 2, "gradient_accumulation_steps": 4, "micro_batch": "auto", "packing": True},
    "packing-16": {
        "batch_size": 16,
        "gradient_accumulation_steps": 1,
        "micro_batch": "auto",
        "packing": True,
    },
    "packing-32": {
        "batch_size": 32,
        "gradient_accumulation_steps": 1,
        "micro_batch": "auto",
        "packing": True,
    },
    "packing-wrapped": {
        "batch_size": 8,
        "gradient_accumulation_steps": 1,
        "packing": True,
        "packing_strategy": "wrapped",
    },
    "full-8x1": {"batch_size": 8, "gradient_accumulation_steps": 1, "padding_free": False, "full": True},
    "full-32x1": {"batch_size": 32, "gradient_accumulation_steps": 1, "padding_free": False, "full": True},
}
H100_BF16_DENSE = 989e12  # FLOP/s, the datasheet's dense bf16 figure (MFU denominator)


def make_rows(n: int, vocab: int, seq: int, full: bool, seed: int = 0) -> list[dict[str, list[int]]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.full(n, seq) if full else np.clip(rng.lognormal(math.log(190), 0.55, n), 32, seq).astype(int)
    rows = []
    for length in lengths:
        ids = rng.integers(100, vocab - 1, int(length)).tolist()
        prompt = int(length * 0.4)
        rows.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (int(length) - prompt)})
    return rows


def tinyllama_dir(root: Path, tokenizer_dir: Path | None = None) -> Path:
    """A random model of TinyLlama-1.1B's shape (22 layers, hidden 2048, 32 heads sharing 4 K/V heads)."""
    import torch
    from transformers import AutoTokenizer

    from genz_speak.testing import tiny

    out = root / "tinyllama-shaped"
    if (out / "config.json").is_file():
        return out
    # The student's tokenizer stands in for TinyLlama's (no download), so the vocabulary is its 49,152
    # rather than 32,000: Unsloth adds a pad token id that must exist in the embedding.
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else tiny.student_tokenizer()
    return tiny.llama(
        out, tokenizer, hidden_size=2048, intermediate_size=5632, layers=22, heads=32, kv_heads=4,
        max_positions=2048, tie_word_embeddings=False, dtype=torch.bfloat16,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )  # fmt: skip


def materialize_base_model_cached(root: Path) -> Path:
    from genz_speak.base_model import materialize_base_model
    from genz_speak.config import EMBEDDED_STUDENT

    out = root / "student"
    if not (out / "config.json").is_file():
        materialize_base_model(EMBEDDED_STUDENT, out, "bfloat16")
    return out


def case_config(case: str, **overrides: Any) -> tuple[Any, bool]:
    """The TrainConfig of a case (4-bit QLoRA, adamw_8bit, seq 1024), and whether its rows are full-length."""
    from genz_speak.config import TrainConfig

    fields = dict(CASES[case])
    full = fields.pop("full", False)
    settings: dict[str, Any] = {
        "load_in_4bit": True,
        "max_seq_length": 1024,
        "optimizer": "adamw_8bit",
        "logging_steps": 1,
        "learning_rate": 1e-4,
        "warmup_ratio": 0.0,
        "gradient_checkpointing": True,
    }
    cfg = replace(TrainConfig(), **{**settings, **fields, **overrides})
    return cfg, full


# Unsloth's packed-row kernels (attention_dispatch module globals, looked up at each call, so wrapping
# them counts the calls its dispatch really makes): torch varlen, or one SDPA call per sequence.
UNSLOTH_PACKED = {"_torch_varlen_packed": "torch varlen", "_sdpa_packed_segments": "sdpa per sequence"}
unsloth_calls: Counter[str] = Counter()


def count_unsloth_calls() -> None:
    dispatch = sys.modules.get("unsloth.utils.attention_dispatch")
    for name, label in UNSLOTH_PACKED.items():
        fn = getattr(dispatch, name, None)
        if fn is None or getattr(fn, "counted", False):
            continue

        def counted(*args: Any, _fn: Any = fn, _label: str = label, **kwargs: Any) -> Any:
            unsloth_calls[_label] += 1
            return _fn(*args, **kwargs)

        counted.counted = True  # type: ignore[attr-defined]
        setattr(dispatch, name, counted)


def kernel_counts(backend: str) -> Counter[str]:
    """A snapshot of the call counters `kernel_used` reports the growth of."""
    from genz_speak.training import attention

    if backend != "unsloth":
        return attention.kernel_calls.copy()
    count_unsloth_calls()
    return unsloth_calls.copy()


def kernel_used(backend: str, trainer: Any, before: Counter[str]) -> str:
    """What computed attention in this case (the product's own report, plus counted calls for Unsloth)."""
    from genz_speak.training import attention
    from genz_speak.training.sft import attention_kernel

    if backend != "unsloth":
        return attention_kernel(backend, trainer, attention.kernel_calls - before)  # type: ignore[arg-type]
    counted = ", ".join(f"{k} x{n}" for k, n in sorted((unsloth_calls - before).items()))
    return attention_kernel(backend, trainer, {}) + (f" [{counted}]" if counted else "")


def examples_per_step(trainer: Any, rows_per_step: int) -> float:
    """Training examples per optimizer step: under bfd packing, the mean examples per packed sequence."""
    columns = trainer.train_dataset.column_names
    if "seq_lengths" not in columns:
        return float(rows_per_step)
    per_sequence = [len(s) for s in trainer.train_dataset["seq_lengths"]]
    return rows_per_step * sum(per_sequence) / len(per_sequence)


def run_case(model_dir: Path, backend: str, case: str, steps: int, warmup: int) -> dict[str, Any]:
    """One measurement, in this process."""
    import torch
    from transformers import TrainerCallback

    from genz_speak.training import backends

    cuda = torch.cuda.is_available()  # CPU runs only smoke-test this script
    cfg, full = case_config(case, backend=backend, max_steps=warmup + steps)
    seq = cfg.max_seq_length
    prepared = backends.load(backend, model_dir, cfg)  # type: ignore[arg-type]
    from datasets import Dataset

    from genz_speak.training.sft import build_trainer

    vocab = prepared.model.config.vocab_size
    rows_per_step = cfg.batch_size * cfg.gradient_accumulation_steps
    rows = make_rows(rows_per_step * (warmup + steps) * (6 if cfg.packing else 1), vocab, seq, full)

    class Clock(TrainerCallback):
        """Time and real (non-padding) tokens at each optimizer step's end."""

        def __init__(self) -> None:
            self.marks: dict[int, tuple[float, int]] = {}
            self.tokens = 0

        def count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids")
            if mask is not None and mask.dim() == 2:
                self.tokens += int(mask.sum())
            elif ids is not None:  # padding-free batches carry no pad tokens
                self.tokens += ids.numel()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.marks[state.global_step] = (time.perf_counter(), self.tokens)

    clock = Clock()
    with tempfile.TemporaryDirectory() as work:
        trainer, micro_used, accum_used = build_trainer(
            cfg,
            backend,  # type: ignore[arg-type]
            prepared,
            Dataset.from_list(rows),
            None,
            Path(work),
            [clock],  # type: ignore[arg-type]
        )
        trainer.model.register_forward_pre_hook(clock.count, with_kwargs=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        before = kernel_counts(backend)
        trainer.train()
        kernel = kernel_used(backend, trainer, before)
    (t0, n0), (t1, n1) = clock.marks[warmup], clock.marks[warmup + steps]
    t, real = t1 - t0, n1 - n0
    n_params = _dense_params(prepared.model.config)
    tps = real / t
    mean_len = sum(len(r["input_ids"]) for r in rows) / len(rows)
    return {
        "model": model_dir.name,
        "backend": backend,
        "case": case,
        "micro_batch": micro_used,
        "grad_accum": accum_used,
        "packing": cfg.packing and cfg.packing_strategy,
        "padding_free": bool(getattr(trainer.args, "padding_free", False)),
        "rows_per_step": rows_per_step,
        "examples_per_step": round(examples_per_step(trainer, rows_per_step), 1),
        "kernel": kernel,
        "steps_timed": steps,
        "real_tokens_per_s": round(tps, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "mfu": round(6 * n_params * tps / H100_BF16_DENSE, 4),
        "mean_row_tokens": round(mean_len, 1),
        "projected_15k_x2_min": round(15000 * 2 * mean_len / tps / 60, 1),
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
    }


def run_training(model_dir: Path, backend: str, case: str, n_rows: int, epochs: float) -> dict[str, Any]:
    """`n_rows` instruction-like rows trained for `epochs` epochs, in this process: wall times."""
    import torch
    from datasets import Dataset

    from genz_speak.training import backends
    from genz_speak.training.sft import build_trainer

    cuda = torch.cuda.is_available()
    start = time.perf_counter()
    cfg, full = case_config(case, backend=backend, epochs=epochs, logging_steps=50)
    prepared = backends.load(backend, model_dir, cfg)  # type: ignore[arg-type]
    rows = make_rows(n_rows, prepared.model.config.vocab_size, cfg.max_seq_length, full, seed=1)
    with tempfile.TemporaryDirectory() as work:
        trainer, micro, accum = build_trainer(
            cfg,
            backend,  # type: ignore[arg-type]
            prepared,
            Dataset.from_list(rows),
            None,
            Path(work),
            [],
        )
        before = kernel_counts(backend)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = trainer.train()
        if cuda:
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        kernel = kernel_used(backend, trainer, before)
    tokens = sum(len(r["input_ids"]) for r in rows) * epochs
    return {
        "model": model_dir.name,
        "backend": backend,
        "case": case,
        "rows": n_rows,
        "epochs": epochs,
        "micro_batch": micro,
        "grad_accum": accum,
        "steps": trainer.state.global_step,
        "kernel": kernel,
        "train_min": round(train_s / 60, 2),
        "total_min": round((time.perf_counter() - start) / 60, 2),
        "real_tokens_per_s": round(tokens / train_s, 1),
        "final_loss": round(result.training_loss, 4),
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
    }


def _dense_params(cfg: Any) -> int:
    """Parameter count of a Llama config (the 4-bit model's packed tensors under-count it)."""
    h, i, layers, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = h * cfg.num_key_value_heads // cfg.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return layers * per_layer + v * h * (1 if cfg.tie_word_embeddings else 2) + h


def run_cases(model_dir: Path, backend: str, cases: list[str], args: argparse.Namespace) -> None:
    """Every case of one (model, backend) in this process, one RESULT line each."""
    import gc

    import torch

    for case in cases:
        try:
            if args.train_rows:
                result = run_training(model_dir, backend, case, args.train_rows, args.epochs)
            else:
                result = run_case(model_dir, backend, case, args.steps, args.warmup)
        except Exception as err:  # one failing case must not hide the others' numbers
            result = {"model": model_dir.name, "backend": backend, "case": case, "error": repr(err)[:200]}
        print("RESULT " + json.dumps(result), flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tinyllama", "student"])
    p.add_argument("--backends", nargs="+", default=["unsloth", "transformers"])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per case")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--train-rows", type=int, help="instead: train this many rows, --epochs times over")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per (model, backend) process")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "genz-bench")
    p.add_argument("--tokenizer", type=Path, help="a saved student tokenizer (else read from the GGUF)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--one", nargs="+", metavar="ARG", help=argparse.SUPPRESS)  # MODEL_DIR BACKEND CASE...
    args = p.parse_args()
    if args.one:
        run_cases(Path(args.one[0]), args.one[1], args.one[2:], args)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for model in args.models:
        if model == "tinyllama":
            model_dir = tinyllama_dir(args.workdir, args.tokenizer)
        else:
            model_dir = materialize_base_model_cached(args.workdir)
        for backend in args.backends:
            # One process per backend keeps Unsloth's patches away from the transformers backend.
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            if args.train_rows:
                cmd += ["--train-rows", str(args.train_rows), "--epochs", str(args.epochs)]
            cmd += ["--one", str(model_dir), backend, *args.cases]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                out, err = proc.stdout, proc.stderr
            except subprocess.TimeoutExpired as exc:
                out, err = _text(exc.stdout), _text(exc.stderr) + f"\ntimed out after {args.timeout:.0f} s"
            sys.stderr.write(err[-20000:])  # the child's log (kernel choices, Unsloth's messages)
            done = {}
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    r = json.loads(line[7:])
                    done[r["case"]] = {**r, "model": model}
            last = (err.strip().splitlines() or ["no output"])[-1][:200]
            for case in args.cases:
                missing = {"model": model, "backend": backend, "case": case, "error": last}
                results.append(done.get(case, missing))
                print(json.dumps(results[-1]), flush=True)
    (print_training_table if args.train_rows else print_table)(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def print_table(results: list[dict[str, Any]]) -> None:
    ok = [r for r in results if "error" not in r]
    full = {(r["model"], r["backend"]): r["real_tokens_per_s"] for r in ok if r["case"] == "full-8x1"}
    tf_mem = {(r["model"], r["case"]): r["peak_mem_gib"] for r in ok if r["backend"] == "transformers"}
    gpus = sorted({r["gpu"] for r in ok})
    print(f"\nGPU: {', '.join(gpus) or 'none'}")
    print(
        "| model | backend | case | micro x accum | examples / step | kernel | real tok/s | x full-8x1 "
        "| peak GiB | mem / transformers | MFU | 15k rows x 2 ep (min) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['model']} | {r['backend']} | {r['case']} | error: {r['error']} |||||||||")
            continue
        base = full.get((r["model"], r["backend"]))
        ratio = f"{r['real_tokens_per_s'] / base:.2f}" if base else ""
        tf = tf_mem.get((r["model"], r["case"]))
        mem_ratio = f"{r['peak_mem_gib'] / tf:.2f}" if tf and r["backend"] == "unsloth" else ""
        print(
            f"| {r['model']} | {r['backend']} | {r['case']} | {r['micro_batch']} x {r['grad_accum']} | "
            f"{r['examples_per_step']} | {r['kernel']} | {r['real_tokens_per_s']:,.0f} | {ratio} | "
            f"{r['peak_mem_gib']} | {mem_ratio} | {r['mfu']:.3f} | {r['projected_15k_x2_min']} |"
        )


def print_training_table(results: list[dict[str, Any]]) -> None:
    gpus = sorted({r["gpu"] for r in results if "gpu" in r})
    print(f"\nGPU: {', '.join(gpus) or 'none'}")
    print(
        "| model | backend | case | rows x epochs | micro x accum | steps | kernel | train (min) "
        "| whole case (min) | real tok/s | mean loss |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['model']} | {r['backend']} | {r['case']} | error: {r['error']} ||||||||")
            continue
        print(
            f"| {r['model']} | {r['backend']} | {r['case']} | {r['rows']:,} x {r['epochs']:g} | "
            f"{r['micro_batch']} x {r['grad_accum']} | {r['steps']} | {r['kernel']} | {r['train_min']} | "
            f"{r['total_min']} | {r['real_tokens_per_s']:,.0f} | {r['final_loss']} |"
        )


if __name__ == "__main__":
    main()
