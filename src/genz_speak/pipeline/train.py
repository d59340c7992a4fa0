"""train: LoRA (QLoRA with load_in_4bit) on the Gen Z dataset with TRL's SFTTrainer, loss on the answer
only; with train.num_processes above 1 the stage starts itself again under `accelerate launch` (data
parallel) and rank 0 alone writes every output."""

from __future__ import annotations

import logging
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genz_speak.config import TrainConfig
from genz_speak.data.chat import prompt_completion
from genz_speak.data.dataset import read_dataset
from genz_speak.errors import InputError, StageFailed
from genz_speak.io import atomic_dir, replace_dir
from genz_speak.models import save_tokenizer
from genz_speak.training import attention, backends, callbacks, distributed
from genz_speak.training.checkpoints import prepare_work_dir
from genz_speak.training.sft import attention_kernel, build_trainer, check_masking, library_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    dataset: Path  # generate's genz_dataset.jsonl: split train is trained on, validation gives eval loss
    base: Path  # prepare's base model folder
    out: Path  # the LoRA adapter and tokenizer
    live_dir: Path  # DVCLive curves and sample answers
    work_dir: Path  # checkpoints, kept for train.resume


@dataclass
class Fitted:
    """What training leaves for rank 0 to save and report."""

    trainer: Any
    tokenizer: Any
    metrics: dict[str, Any]


def live_tmp(live_dir: Path) -> Path:
    """Where DVCLive writes during the run (git- and dvc-ignored as *.tmp): `live_dir` is replaced only by a
    run that finishes, and a resumed run continues the curves a killed one left here."""
    return live_dir.with_name(live_dir.name + ".tmp")


def _add_reporting(
    trainer: Any, cfg: TrainConfig, rows: list[dict[str, Any]], live_dir: Path, tokenizer: Any, resumed: bool
) -> None:
    """Rank 0's callbacks: DVCLive curves, and sample answers to the first validation questions, written
    to `live_tmp(live_dir)`."""
    live_dir = live_tmp(live_dir)
    if not resumed:
        shutil.rmtree(live_dir, ignore_errors=True)
    live_dir.mkdir(parents=True, exist_ok=True)
    trainer.add_callback(callbacks.live_callback(live_dir, resume=resumed))
    samples = [r for r in rows if r["split"] == "validation"][: cfg.sample_questions]
    (live_dir / "samples.jsonl").touch()  # the stage's output even when nothing is sampled
    if samples:
        trainer.add_callback(
            callbacks.sample_callback(
                samples, tokenizer, live_dir / "samples.jsonl", cfg.sample_max_new_tokens
            )
        )


def _fit(cfg: TrainConfig, rows: list[dict[str, Any]], paths: Paths, processes: int) -> Fitted | None:
    """Train on every rank; rank 0 gets the trainer, tokenizer and metrics (the others None), once every
    rank's LoRA weights are checked to be equal."""
    import torch

    from genz_speak.models import device, set_cpu_threads

    set_cpu_threads(cfg.cpu_threads)
    main = distributed.is_main_process()
    backend = backends.resolve_backend(cfg)
    prepared = backends.load(backend, paths.base, cfg)  # before trl: unsloth must patch first

    from datasets import Dataset

    train_rows = [prompt_completion(r) for r in rows if r["split"] == "train"]
    eval_rows = [prompt_completion(r) for r in rows if r["split"] == "validation"]
    if not train_rows:
        raise InputError("the dataset has no rows with split == 'train'")
    cuda = torch.cuda.is_available()
    trainer, micro, accum = build_trainer(
        cfg,
        backend,
        prepared,
        Dataset.from_list(train_rows),
        Dataset.from_list(eval_rows) if eval_rows else None,
        paths.work_dir,
        [],
        processes,
    )
    # The Trainer has joined the process group by now: rank 0 alone sorts the checkpoints out.
    checkpoint = distributed.broadcast(
        prepare_work_dir(cfg, rows, paths.base, paths.work_dir) if main else None
    )
    # TRL's running count of the non-padding tokens trained (its `num_tokens` log shows it at logging steps).
    clock = callbacks.step_clock(lambda: int(getattr(trainer, "_total_train_tokens", 0)))
    trainer.add_callback(clock)
    if main:
        _add_reporting(trainer, cfg, rows, paths.live_dir, prepared.tokenizer, resumed=checkpoint is not None)
    masking = check_masking(trainer.train_dataset, len(train_rows), packed=cfg.packing)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if checkpoint:
        log.info("train.resume: resuming from %s", checkpoint)
    calls_before = attention.kernel_calls.copy()
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.monotonic() - start
    kernel = attention_kernel(backend, trainer, attention.kernel_calls - calls_before)
    ranks = distributed.gather({"adapter": distributed.adapter_digest(trainer.model), "peak_mb": _peak_mb()})
    distributed.finish()  # the last collective: rank 0 saves alone from here
    if not main:
        return None
    if len({r["adapter"] for r in ranks}) != 1:
        raise StageFailed(
            "the LoRA weights differ across data-parallel ranks after training (digests "
            f"{[r['adapter'][:12] for r in ranks]}): gradients were not synchronised; nothing saved"
        )
    run = {
        "backend": backend,
        "device": str(device()) if not cuda else torch.cuda.get_device_name(),
        "processes": processes,
        "micro_batch": micro,
        "gradient_accumulation_steps": accum,
        "attention_kernel": kernel,
        "precision": prepared.precision,
        "kernel_path": _kernel_path(prepared.precision, cuda),
        "train_rows": len(train_rows),
        "training_loss": result.training_loss,
        "wall_s": wall,
        "train_s": clock.train_seconds(),
        "tokens": int(getattr(trainer, "_total_train_tokens", 0)),
        "steady_tokens_per_s": clock.steady_tokens_per_s(),
        "peak_mb": max(r["peak_mb"] for r in ranks),  # per process: each holds a whole model copy
        "adapter": ranks[0]["adapter"],  # equal on all ranks (else raised)
        "ranks": len(ranks),
        "cuda": cuda,
    }
    return Fitted(trainer, prepared.tokenizer, _metrics(cfg, trainer, masking, run))


def _peak_mb() -> float:
    """This process's peak memory so far: CUDA's allocated bytes, else the resident set (RSS)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _kernel_path(precision: str, cuda: bool) -> str:
    if cuda:
        return "bf16 autocast, CUDA"
    from genz_speak.training.cpu import kernel_path

    return kernel_path(precision)  # type: ignore[arg-type]


def _metrics(cfg: TrainConfig, trainer: Any, masking: dict[str, int], run: dict[str, Any]) -> dict[str, Any]:
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    tokens = run["tokens"]
    if not tokens:  # TRL 1.15 under Unsloth counts no tokens: count the epochs' tokens instead
        tokens = sum(map(len, trainer.train_dataset["input_ids"])) * (trainer.state.epoch or 0.0)
    train_s, steady = run["train_s"], run["steady_tokens_per_s"]
    end_of_turn = evals[-1].get("eval_end_of_turn_prob") if evals else None
    return {
        "backend": run["backend"],
        "device": run["device"],
        "precision": run["precision"],  # the CPU's bf16 or fp32 (train.cpu_precision): it changes the adapter
        "load_in_4bit": cfg.load_in_4bit,
        "processes": run["processes"],
        "steps": trainer.state.global_step,
        "micro_batch": run["micro_batch"],
        "gradient_accumulation_steps": run["gradient_accumulation_steps"],
        "rows_per_step": run["micro_batch"] * run["gradient_accumulation_steps"] * run["processes"],
        "packing": cfg.packing and cfg.packing_strategy,
        "padding_free": bool(getattr(trainer.args, "padding_free", False)),
        "attention_kernel": run["attention_kernel"],
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "train_rows": run["train_rows"],
        "final_loss": round(losses[-1], 4) if losses else None,
        "min_loss": round(min(losses), 4) if losses else None,
        "train_loss_mean": round(run["training_loss"], 4),
        "eval_loss": round(evals[-1]["eval_loss"], 4) if evals else None,
        # Teacher-forced on the validation rows: the probability of the end-of-turn token where each
        # answer ends. A model that has not learned to stop keeps talking (None: Unsloth's loss ran).
        "end_of_turn_prob": round(end_of_turn, 4) if end_of_turn is not None else None,
        "tokens": int(tokens),  # non-padding tokens of every step, all processes
        "completion_tokens": masking["completion_tokens"],
        "rows_fully_masked": masking["rows_fully_masked"],
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "adapter_sha256": run["adapter"],
        "adapter_ranks_checked": run["ranks"],
        # How the run went (metrics/run/train.json): the same adapter gives other numbers here.
        "run": {
            "versions": library_versions(run["backend"], cfg.load_in_4bit),
            "kernel_path": run["kernel_path"],  # what ran the matrix multiplies (e.g. oneDNN's AMX kernel)
            # Over the optimizer steps' own time: evaluation, sample answers and checkpoints excluded.
            "tokens_per_s": round(tokens / train_s, 1) if train_s > 0 else None,
            "tokens_per_s_steady": round(steady, 1) if steady else None,
            "train_s": round(train_s, 1),
            "wall_s": round(run["wall_s"], 1),
            "peak_memory_mb": round(run["peak_mb"], 1),
            "peak_memory_kind": "cuda_allocated" if run["cuda"] else "process_rss",
        },
    }


def _publish_live(tmp: Path, live_dir: Path) -> None:
    """Move each of DVCLive's entries into `live_dir`, replacing the previous run's; files DVCLive does not
    write there (the tracked .gitignore) stay."""
    live_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(tmp.iterdir()):
        target = live_dir / entry.name
        if entry.is_dir():
            replace_dir(entry, target)
        else:
            os.replace(entry, target)
    shutil.rmtree(tmp, ignore_errors=True)


def run(cfg: TrainConfig, paths: Paths) -> dict[str, Any] | None:
    """Train the adapter and write it (rank 0); its metrics, or None in the other data-parallel ranks."""
    rows = read_dataset(paths.dataset)  # bad data stops the stage here, before any process is launched
    backends.check_target_modules(cfg, paths.base)  # and params the model cannot take, likewise
    processes = distributed.num_processes(cfg)
    if processes > 1 and distributed.world_size() == 1:
        distributed.rows_per_process(cfg, processes)  # an uneven split is a params error, said once
        raise SystemExit(distributed.relaunch(processes))
    if processes == 1:
        distributed.use_one_gpu()
    try:
        fitted = _fit(cfg, rows, paths, processes)
    except BaseException:
        if not cfg.resume:  # with train.resume, a rerun continues these curves from the checkpoints
            shutil.rmtree(live_tmp(paths.live_dir), ignore_errors=True)
        raise
    if fitted is None:
        return None
    with atomic_dir(paths.out) as tmp:  # the adapter appears only once complete
        fitted.trainer.model.save_pretrained(tmp)
        save_tokenizer(fitted.tokenizer, tmp)
    _publish_live(live_tmp(paths.live_dir), paths.live_dir)
    shutil.rmtree(paths.work_dir, ignore_errors=True)  # checkpoints only serve an unfinished run
    return fitted.metrics
