"""Supervised fine-tuning with TRL's SFTTrainer on conversational prompt-completion rows.

Loss falls on the assistant completion only (TRL's `completion_only_loss`), which works with any chat
template: no `{% generation %}` markers or response-marker strings to keep in sync with the template.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from genz_speak.config import TrainConfig
from genz_speak.data.chat import prompt_completion
from genz_speak.errors import InputError
from genz_speak.training import attention, backends, distributed

log = logging.getLogger(__name__)


def _live_callback(live_dir: Path, resume: bool = False) -> Any:
    from dvclive.huggingface import DVCLiveCallback

    from dvclive import Live

    class StepAlignedDVCLive(DVCLiveCallback):
        """DVCLive's callback counts log calls as steps; align its step with the optimizer step instead,
        so train and eval curves share one x-axis."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            pass  # the stage's params are in params.yaml and dvc.lock; all TrainingArguments would be noise

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.live.step = state.global_step
            super().on_log(args, state, control, **kwargs)

    # Inside a DVC stage DVCLive must neither rewrite dvc.yaml nor create an experiment of its own.
    return StepAlignedDVCLive(
        live=Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resume), log_model=False
    )


def _step_clock() -> Any:
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """The wall time at each optimizer step's end: throughput without the first steps' warm-up (kernels
        compiled and autotuned, memory pools grown), which a short run's overall tokens/s includes."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.monotonic())

        def steady_rate(self) -> float | None:
            """Optimizer steps per second over the second half of the run (Unsloth's kernels were seen
            still compiling and autotuning 15 steps in)."""
            half = len(self.times) // 2
            if half < 1:
                return None
            return (len(self.times) - half) / (self.times[-1] - self.times[half - 1])

    return StepClock()


def _sample_callback(questions: list[dict[str, Any]], tokenizer: Any, path: Path, max_new_tokens: int) -> Any:
    from transformers import TrainerCallback

    from genz_speak.data.chat import user_message
    from genz_speak.io import AppendLog

    class SampleAnswers(TrainerCallback):
        """Greedy answers to fixed validation questions before training and at each evaluation, appended to
        a JSONL (step, id, question, answer): drift towards a template shows before evaluate runs."""

        def _sample(self, step: int, model: Any) -> None:
            import torch

            was_training = model.training
            model.eval()
            side, tokenizer.padding_side = tokenizer.padding_side, "left"  # new tokens follow each prompt
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": user_message(q)}], tokenize=False, add_generation_prompt=True
                )
                for q in questions
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            with torch.inference_mode():
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            tokenizer.padding_side = side
            model.train(was_training)
            with AppendLog(path) as log_file:
                for q, ids in zip(questions, out[:, enc["input_ids"].shape[1] :], strict=True):
                    answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
                    log_file.write(
                        {"step": step, "id": q["id"], "question": q["instruction"], "answer": answer}
                    )

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            if state.global_step == 0:
                self._sample(0, model)

        def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self._sample(state.global_step, model)

    return SampleAnswers()


def check_masking(dataset: Any, rows_in: int, packed: bool = False) -> dict[str, int]:
    """Count trained (completion) tokens; fail when masking left (almost) nothing to learn from.

    A row whose completion was truncated away, or whose template dropped the assistant turn, has every
    label masked; TRL drops such rows, so they show up as missing rows here.
    """
    # TRL >= 1.16 folds the mask into `labels` (-100 = masked); 1.15 keeps a `completion_mask` column.
    if "labels" in dataset.column_names:
        per_row = [sum(t != -100 for t in labels) for labels in dataset["labels"]]
    else:
        per_row = [sum(m) for m in dataset["completion_mask"]]
    # Packed sequences hold several rows each: only the token count says anything there.
    masked = 0 if packed else rows_in - sum(n > 0 for n in per_row)
    stats = {"rows": rows_in, "completion_tokens": sum(per_row), "rows_fully_masked": masked}
    if stats["completion_tokens"] == 0 or masked > rows_in // 2:
        raise InputError(
            f"loss masking left {masked}/{rows_in} rows with no trained token: the completion is truncated "
            "away (raise train.max_seq_length) or the chat template drops the assistant turn"
        )
    if masked:
        log.warning("%d of %d rows have no completion token left after truncation", masked, rows_in)
    return stats


def plan_micro_batch(cfg: TrainConfig, model: Any, processes: int = 1) -> tuple[int, int]:
    """(rows per device step, accumulation steps) keeping rows per optimizer step fixed.

    The optimizer step's batch_size * gradient_accumulation_steps rows are split evenly over `processes`
    data-parallel processes: micro-batch x accumulation x processes. Under packing a row is a packed
    sequence of up to max_seq_length tokens, so the tokens per optimizer step stay fixed too. "auto" on
    CUDA probes a forward + backward of the largest batch each divisor of a process's rows can make (see
    `probe_batch`), largest first, and keeps the first that fits; on CPU memory is not the limit, so it
    keeps batch_size (or the largest divisor below it).
    """
    import torch

    per_process = distributed.rows_per_process(cfg, processes)
    if isinstance(cfg.micro_batch, int):
        if per_process % cfg.micro_batch:
            raise InputError(
                f"params.yaml: train.micro_batch: {cfg.micro_batch} does not divide the {per_process} rows "
                f"each of the {processes} processes contributes to an optimizer step"
            )
        return cfg.micro_batch, per_process // cfg.micro_batch
    if cfg.micro_batch is None or not torch.cuda.is_available():
        if cfg.micro_batch == "auto":
            log.info("micro_batch auto: no CUDA, keeping batch_size %d", cfg.batch_size)
        # batch_size itself, unless a process's share of the step is smaller or not a multiple of it.
        micro = max(d for d in range(1, min(cfg.batch_size, per_process) + 1) if per_process % d == 0)
        return micro, per_process // micro
    model.train()
    for micro in sorted((d for d in range(1, per_process + 1) if per_process % d == 0), reverse=True):
        batch = probe_batch(micro, cfg.max_seq_length, bool(cfg.padding_free_batches), model.device)
        try:
            # Under autocast, as the Trainer's bf16 forward runs (activations would be fp32 without it).
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
        except torch.OutOfMemoryError:
            log.info("micro_batch auto: %d x %d tokens does not fit", micro, cfg.max_seq_length)
            continue
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        log.info(
            "micro_batch auto: %d rows x %d accumulation steps x %d processes (%d rows per optimizer step)",
            micro,
            per_process // micro,
            processes,
            per_process * processes,
        )
        return micro, per_process // micro
    raise RuntimeError(f"micro_batch auto: not even 1 row of {cfg.max_seq_length} tokens fits on the GPU")


def probe_batch(micro: int, seq: int, padding_free: bool, device: Any) -> dict[str, Any]:
    """The largest batch a micro-batch of `micro` rows can make: `micro` rows of `seq` tokens, or, when
    batches are padding-free, those rows laid end to end in one row with restarting position_ids (one
    sequence per row: the longest sequences a packed row can hold), as the collator flattens them."""
    import torch

    ids = torch.randint(100, 1000, (micro, seq), device=device)
    if not padding_free:
        return {"input_ids": ids, "labels": ids}
    positions = torch.arange(seq, device=device).repeat(micro)[None]
    return {"input_ids": ids.reshape(1, -1), "labels": ids.reshape(1, -1), "position_ids": positions}


def build_trainer(
    cfg: TrainConfig,
    backend: backends.Backend,
    prepared: backends.Prepared,
    train_dataset: Any,
    eval_dataset: Any | None,
    work_dir: Path,
    callbacks: list[Any],
    processes: int = 1,
) -> tuple[Any, int, int]:
    """The SFTTrainer for `cfg`, and the (micro-batch, accumulation) each of `processes` data-parallel
    processes uses. Datasets may hold conversational prompt-completion rows or pre-tokenized `input_ids` +
    `completion_mask`."""
    import torch
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    model = prepared.model
    if prepared.peft_config is not None:  # probe with the adapter in place, as training will run
        from peft import get_peft_model
        from transformers import set_seed

        set_seed(cfg.seed)  # LoRA's A matrices start random: seeded, a rerun (and every rank) starts alike
        model = get_peft_model(model, prepared.peft_config)
    padding_free = cfg.padding_free_batches
    implementation = getattr(model.config, "_attn_implementation", None)
    if padding_free and backend == "transformers" and not attention.isolates_rows(implementation):
        raise InputError(
            f"params.yaml: train.attn_implementation: {implementation} lets the rows of a padding-free batch "
            f"(train.packing with bfd, or train.padding_free) attend to each other; leave it unset "
            f"({attention.VARLEN}: torch's varlen kernel on CUDA, SDPA per row elsewhere) or use "
            "flash_attention_2 where installed"
        )
    micro, accum = plan_micro_batch(cfg, model, processes)
    # TRL bounds row length by packing or padding; padding-free batches without packing leave it to us.
    truncate_here = bool(padding_free) and not cfg.packing
    args = SFTConfig(
        output_dir=str(work_dir),
        max_length=None if truncate_here else cfg.max_seq_length,
        completion_only_loss=True,
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accum,
        packing=cfg.packing,
        packing_strategy=cfg.packing_strategy,
        # Unset unless chosen, so Unsloth's own per-GPU padding choice stays available.
        **({"padding_free": padding_free} if padding_free is not None else {}),
        pad_to_multiple_of=cfg.pad_to_multiple_of,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        optim=cfg.optimizer if cfg.optimizer != "adamw_8bit" else "adamw_bnb_8bit",
        gradient_checkpointing=cfg.gradient_checkpointing and backend == "transformers",
        logging_steps=cfg.logging_steps,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if eval_dataset is not None else "no",
        eval_steps=cfg.eval_steps,
        # With train.resume, checkpoints every save_steps (only the last kept) let a killed run continue.
        save_strategy="steps" if cfg.resume else "no",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not cuda,
        bf16=cuda,
        report_to="none",
        dataloader_num_workers=0,
        # Every LoRA weight takes part in each forward pass: DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=prepared.tokenizer,
        callbacks=callbacks,
    )
    if truncate_here:
        trainer.train_dataset = _truncate(trainer.train_dataset, cfg.max_seq_length)
        if trainer.eval_dataset is not None:
            trainer.eval_dataset = _truncate(trainer.eval_dataset, cfg.max_seq_length)
    return trainer, micro, accum


def attention_kernel(backend: backends.Backend, trainer: Any, calls: dict[str, int]) -> str:
    """What computed attention in training, for the metrics: genz_varlen's kernels with their call counts
    (every layer of every forward, padded or generation calls as sdpa), Unsloth's packed-row kernel, or
    the transformers attention implementation."""
    if backend == "unsloth":
        padding_free = bool(getattr(trainer.args, "padding_free", False))
        return attention.unsloth_packed_kernel() if padding_free else "unsloth (padded batches)"
    implementation = str(getattr(trainer.model.config, "_attn_implementation", None))
    if implementation != attention.VARLEN:
        return implementation
    return f"{implementation}: " + ", ".join(f"{k} x{n}" for k, n in sorted(calls.items()))


def _truncate(dataset: Any, max_length: int) -> Any:
    """Cut tokenized rows to `max_length` tokens, as TRL's own truncation does (it keeps the start)."""
    columns = [c for c in ("input_ids", "completion_mask", "assistant_masks") if c in dataset.column_names]
    return dataset.map(lambda row: {c: row[c][:max_length] for c in columns})


def prepare_work_dir(
    cfg: TrainConfig, rows: list[dict[str, Any]], base_dir: Path, work_dir: Path
) -> str | None:
    """The checkpoint to resume from, if `train.resume` is on and `work_dir` holds one of this very run
    (same train params, dataset and base); anything else there is stale and removed."""
    from genz_speak.models import model_fingerprint

    state = [dataclasses.asdict(cfg), rows, model_fingerprint(base_dir)]
    blob = json.dumps(state, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()
    stamp = work_dir / "fingerprint.txt"
    if not cfg.resume or not stamp.is_file() or stamp.read_text() != fingerprint:
        shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    return _last_complete_checkpoint(work_dir) if cfg.resume else None


def _last_complete_checkpoint(work_dir: Path) -> str | None:
    """The newest checkpoint that was written to the end: the Trainer writes trainer_state.json last, so a
    kill mid-save leaves a folder without a readable one (removed here, never resumed from)."""
    steps = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]), reverse=True)
    for ckpt in steps:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return str(ckpt)
        except (OSError, ValueError):
            log.warning("train.resume: %s is incomplete (killed while saving); removed", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)
    return None


def train(
    cfg: TrainConfig,
    rows: list[dict[str, Any]],
    base_dir: Path,
    out_dir: Path,
    live_dir: Path,
    work_dir: Path,
) -> dict[str, Any] | None:
    """Train a LoRA adapter on the dataset's train split (validation split for eval loss); save it.

    Under data parallelism every process trains; rank 0 alone saves the adapter, logs curves and returns
    the metrics (the other ranks return None), after checking that every rank holds the same LoRA weights.
    """
    import torch

    from genz_speak.models import device, set_cpu_threads

    set_cpu_threads(cfg.cpu_threads)
    processes = distributed.num_processes(cfg)
    main = distributed.is_main_process()
    backend = backends.resolve_backend(cfg)
    prepared = backends.load(backend, base_dir, cfg)  # before trl: unsloth must patch first

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
        work_dir,
        [],
        processes,
    )
    # The Trainer has joined the process group by now: rank 0 alone sorts the checkpoints out.
    checkpoint = distributed.broadcast(prepare_work_dir(cfg, rows, base_dir, work_dir) if main else None)
    clock = _step_clock()
    trainer.add_callback(clock)
    if main:
        trainer.add_callback(_live_callback(live_dir, resume=checkpoint is not None))
        samples = [r for r in rows if r["split"] == "validation"][: cfg.sample_questions]
        (live_dir / "samples.jsonl").touch()  # the stage's output even when nothing is sampled
        if samples:
            trainer.add_callback(
                _sample_callback(
                    samples, prepared.tokenizer, live_dir / "samples.jsonl", cfg.sample_max_new_tokens
                )
            )
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

    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    ranks = distributed.gather({"adapter": distributed.adapter_digest(trainer.model), "peak_mb": peak_mb})
    distributed.finish()  # the last collective: rank 0 saves alone from here
    if not main:
        return None
    if len({r["adapter"] for r in ranks}) != 1:
        raise RuntimeError(
            "the LoRA weights differ across data-parallel ranks after training (digests "
            f"{[r['adapter'][:12] for r in ranks]}): gradients were not synchronised; nothing saved"
        )
    trainer.model.save_pretrained(out_dir)
    prepared.tokenizer.save_pretrained(out_dir)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    if not tokens:  # TRL 1.15 under Unsloth logs no num_tokens: count the epochs' tokens instead
        tokens = sum(map(len, trainer.train_dataset["input_ids"])) * (trainer.state.epoch or 0.0)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    steps_per_s = clock.steady_rate()
    return {
        "backend": backend,
        "device": str(device()) if not cuda else torch.cuda.get_device_name(),
        "load_in_4bit": cfg.load_in_4bit,
        "processes": processes,
        "steps": trainer.state.global_step,
        "micro_batch": micro,
        "gradient_accumulation_steps": accum,
        "rows_per_step": micro * accum * processes,
        "packing": cfg.packing and cfg.packing_strategy,
        "padding_free": bool(getattr(trainer.args, "padding_free", False)),
        "attention_kernel": kernel,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "train_rows": len(train_rows),
        "final_loss": round(losses[-1], 4) if losses else None,
        "min_loss": round(min(losses), 4) if losses else None,
        "train_loss_mean": round(result.training_loss, 4),
        "eval_loss": round(eval_losses[-1], 4) if eval_losses else None,
        "tokens": int(tokens),
        "completion_tokens": masking["completion_tokens"],
        "rows_fully_masked": masking["rows_fully_masked"],
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "tokens_per_s_steady": (
            round(tokens / trainer.state.global_step * steps_per_s, 1) if steps_per_s else None
        ),
        "wall_s": round(wall, 1),
        # Per process: the largest of the ranks (each holds a whole model copy).
        "peak_memory_mb": round(max(r["peak_mb"] for r in ranks), 1),
        "peak_memory_kind": "cuda_allocated" if cuda else "process_rss",
        "trainable_parameters": trainable,
        "adapter_sha256": ranks[0]["adapter"],  # equal on all `adapter_ranks_checked` ranks (else raised)
        "adapter_ranks_checked": len(ranks),
    }
