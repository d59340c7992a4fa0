"""Supervised fine-tuning with TRL's SFTTrainer on conversational prompt-completion rows.

Loss falls on the assistant completion only (TRL's `completion_only_loss`), which works with any chat
template: no `{% generation %}` markers or response-marker strings to keep in sync with the template.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from genz_speak.config import TrainConfig
from genz_speak.errors import InputError, ParamError, StageFailed
from genz_speak.training import attention, backends, cpu, distributed, loss

log = logging.getLogger(__name__)


def library_versions(backend: str, load_in_4bit: bool) -> dict[str, str]:
    """The versions of the libraries a training result depends on, so `dvc metrics diff` shows when a
    result moved because a library did."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "transformers", "trl", "peft", "accelerate"]
    names += ["unsloth", "unsloth_zoo"] if backend == "unsloth" else []
    names += ["bitsandbytes"] if load_in_4bit else []
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


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
            raise ParamError(
                "train.micro_batch",
                f"{cfg.micro_batch} does not divide the {per_process} rows "
                f"each of the {processes} processes contributes to an optimizer step",
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
    raise StageFailed(
        f"train.micro_batch auto: not even 1 row of {cfg.max_seq_length} tokens fits on the GPU; lower "
        "train.max_seq_length or set train.load_in_4bit: true"
    )


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


def sft_args(
    cfg: TrainConfig,
    backend: backends.Backend,
    work_dir: Path,
    micro: int,
    accum: int,
    truncate_here: bool,
    evaluate: bool,
    precision: cpu.Precision,
) -> Any:
    """TRL's SFTConfig for `cfg`: `micro` rows per device step, `accum` accumulation steps; with
    `truncate_here`, rows are cut by `truncate` rather than by TRL; under bf16 autocast when `precision` is
    bf16 (always on CUDA)."""
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    padding_free = cfg.padding_free_batches
    return SFTConfig(
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
        # transformers 5 dropped `warmup_ratio`: a float below 1 in `warmup_steps` is the ratio of all steps.
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        optim=cfg.optimizer if cfg.optimizer != "adamw_8bit" else "adamw_bnb_8bit",
        gradient_checkpointing=cfg.gradient_checkpointing and backend == "transformers",
        logging_steps=cfg.logging_steps,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if evaluate else "no",
        eval_steps=cfg.eval_steps,
        # With train.resume, checkpoints every save_steps (only the last kept) let a killed run continue.
        save_strategy="steps" if cfg.resume else "no",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        report_to="none",
        dataloader_num_workers=0,
        # Every LoRA weight takes part in each forward pass: DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False,
    )


def build_trainer(
    cfg: TrainConfig,
    backend: backends.Backend,
    prepared: backends.Prepared,
    train_dataset: Any,
    eval_dataset: Any | None,
    work_dir: Path,
    callbacks: list[Any],
    processes: int = 1,
    *,
    trl_loss: bool = False,
) -> tuple[Any, int, int]:
    """The SFTTrainer for `cfg`, and the (micro-batch, accumulation) each of `processes` data-parallel
    processes uses. Datasets may hold conversational prompt-completion rows or pre-tokenized `input_ids` +
    `completion_mask`. `trl_loss` keeps TRL's own loss (the benchmark's "before")."""
    from trl import SFTTrainer

    model = prepared.model
    if prepared.peft_config is not None:  # probe with the adapter in place, as training will run
        from peft import get_peft_model
        from transformers import set_seed

        set_seed(cfg.seed)  # LoRA's A matrices start random: seeded, a rerun (and every rank) starts alike
        model = get_peft_model(model, prepared.peft_config)
        _expose_head_bias(model)
    padding_free = cfg.padding_free_batches
    implementation = getattr(model.config, "_attn_implementation", None)
    if padding_free and backend == "transformers" and not attention.isolates_rows(implementation):
        raise ParamError(
            "train.attn_implementation",
            f"{implementation} lets the rows of a padding-free batch "
            f"(train.packing with bfd, or train.padding_free) attend to each other; leave it unset "
            f"({attention.VARLEN}: torch's varlen kernel on CUDA, SDPA per row elsewhere) or use "
            "flash_attention_2 where installed",
        )
    layers = getattr(model.config, "layer_types", None) or []
    if padding_free and implementation == attention.VARLEN and "sliding_attention" in layers:
        # genz_varlen's padding-free path attends over each whole sequence: it would ignore the window.
        raise ParamError(
            "train.packing/train.padding_free",
            f"{model.config.model_type} uses sliding-window "
            f"attention, which {attention.VARLEN}'s padding-free batches do not honour; train on padded "
            "batches (train.packing: false, train.padding_free: false) or set train.attn_implementation: "
            "flash_attention_2 where installed",
        )
    micro, accum = plan_micro_batch(cfg, model, processes)
    # TRL bounds row length by packing or padding; padding-free batches without packing leave it to us.
    truncate_here = bool(padding_free) and not cfg.packing
    args = sft_args(
        cfg, backend, work_dir, micro, accum, truncate_here, eval_dataset is not None, prepared.precision
    )
    # Unsloth brings its own loss kernels; elsewhere the loss is computed on the trained positions alone.
    own_loss = backend == "transformers" and loss.supports(model) and not trl_loss
    trainer = (loss.trainer_class(SFTTrainer) if own_loss else SFTTrainer)(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=prepared.tokenizer,
        callbacks=callbacks,
    )
    if truncate_here:
        trainer.train_dataset = truncate(trainer.train_dataset, cfg.max_seq_length)
        if trainer.eval_dataset is not None:
            trainer.eval_dataset = truncate(trainer.eval_dataset, cfg.max_seq_length)
    return trainer, micro, accum


def _expose_head_bias(model: Any) -> None:
    """TRL's fused LM head reads `lm_head.weight` and `lm_head.bias` itself. With new token rows to train
    (prepare.chat_template: chatml) peft wraps the head in a TrainableTokensWrapper, which serves the
    weight with the trained rows merged in but has no `bias`: give it the wrapped layer's."""
    head = model.get_output_embeddings()
    if type(head).__name__ == "TrainableTokensWrapper" and "bias" not in vars(head):
        head.bias = getattr(head.original_module, "bias", None)


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


def truncate(dataset: Any, max_length: int) -> Any:
    """Cut tokenized rows to `max_length` tokens, as TRL's own truncation does (it keeps the start). The
    loss mask is `completion_mask` in TRL 1.15 and folded into `labels` from 1.16."""
    columns = [c for c in ("input_ids", "completion_mask", "labels") if c in dataset.column_names]
    return dataset.map(lambda row: {c: row[c][:max_length] for c in columns})
