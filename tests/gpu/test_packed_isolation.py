"""Packed rows stay isolated on the GPU, on both backends (gpu marker; skipped without CUDA).

A 4-bit QLoRA model (transformers + peft + bitsandbytes with genz_varlen, or Unsloth with its torch-varlen
path) takes one packed micro-batch from the trainer's own collator (TRL bfd packing). For each row in it,
the loss over its completion tokens and the LoRA gradient of that loss must equal the same row run
alone, within bf16 rounding:

    |loss packed - loss alone| <= LOSS_TOL      ||grad packed - grad alone|| / ||grad alone|| <= GRAD_TOL

A control feeds the same tokens as one sequence (position_ids not restarting: rows attend to the rows
before them, as `packing_strategy: wrapped` does) and must miss by far more, so the check can fail. The
figures are printed and recorded as junit properties (`pytest -rA --junitxml=...`).

Unsloth patches transformers when imported, so the transformers case skips in a process where it
already was: run `pytest tests/gpu/test_packed_isolation.py -k transformers` on its own first
(`bash scripts/gpu_kit.sh run tests` does).
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from genz_speak.config import TrainConfig
from genz_speak.testing import tiny
from genz_speak.training import attention

pytestmark = pytest.mark.gpu

LOSS_TOL = 2e-2  # on per-row losses near 10.8 (random weights): 0.2%
GRAD_TOL = 5e-2  # relative, over all LoRA weights


@pytest.fixture(scope="module")
def gqa_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with TinyLlama's head size (64) and grouped-query attention (4 query heads,
    2 K/V heads), and the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    out = tmp_path_factory.mktemp("gqa-llama")
    return tiny.llama(out, tok, hidden_size=256, intermediate_size=512, max_positions=1024,
                      tie_word_embeddings=False, dtype=torch.bfloat16)  # fmt: skip


def rows(n: int = 24, seed: int = 0) -> list[dict[str, list[int]]]:
    """Instruction-like pre-tokenized rows: 20-200 tokens, the last 60% of each the completion."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(20, 200, (1,), generator=g))
        ids = torch.randint(100, 40000, (length,), generator=g).tolist()
        prompt = int(length * 0.4)
        out.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (length - prompt)})
    return out


def packed_batch(backend: str, model_dir: Path, work: Path) -> tuple[Any, dict[str, Any]]:
    """The LoRA model as the trainer holds it, and the first packed micro-batch of its collator."""
    from datasets import Dataset

    from genz_speak.training import backends
    from genz_speak.training.sft import build_trainer

    cfg = replace(
        TrainConfig(),
        backend=backend,  # type: ignore[arg-type]
        load_in_4bit=True,
        packing=True,
        batch_size=1,  # one packed sequence: the control below feeds it whole, within max_seq_length
        max_seq_length=512,
        max_steps=1,
        gradient_checkpointing=False,  # several backward passes through one forward
    )
    prepared = backends.load(backend, model_dir, cfg)  # type: ignore[arg-type]
    trainer, _, _ = build_trainer(cfg, backend, prepared, Dataset.from_list(rows()), None, work, [])  # type: ignore[arg-type]
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.train()
    return model, {k: v.to(model.device) if hasattr(v, "to") else v for k, v in batch.items()}


def row_losses_and_grads(
    model: Any, inputs: dict[str, Any], labels: Any, spans: list[tuple[int, int]]
) -> list[tuple[float, Any, Any]]:
    """(mean completion-token loss, LoRA gradient, logits) of each span of a forward over `inputs`.

    One forward per span: Unsloth's fused LoRA kernels modify tensors their backward saved, so a graph
    cannot be backpropagated twice (retain_graph) the way per-row losses of one forward would need."""
    import torch
    import torch.nn.functional as F

    lora = [p for p in model.parameters() if p.requires_grad]
    out = []
    for start, end in spans:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(**inputs).logits[0].float()
        loss = F.cross_entropy(logits[start : end - 1], labels[start + 1 : end], ignore_index=-100)
        loss.backward()
        grad = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in lora]
        )
        out.append((float(loss), grad, logits[start:end].detach()))
    model.zero_grad(set_to_none=True)
    return out


def check_isolation(backend: str, model_dir: Path, work: Path, record: Callable[[str, Any], None]) -> None:
    import torch

    model, batch = packed_batch(backend, model_dir, work)
    ids, labels, positions = batch["input_ids"], batch["labels"][0], batch["position_ids"]
    starts = [*(positions[0] == 0).nonzero().flatten().tolist(), ids.shape[1]]
    # Rows with completion tokens to learn from (TRL's padding, if any, is one-token segments).
    spans = [(a, b) for a, b in itertools.pairwise(starts) if (labels[a + 1 : b] != -100).any()]
    assert len(spans) >= 3, f"the packed batch holds {len(spans)} rows: too few to test isolation"
    packed_inputs = {k: v for k, v in batch.items() if k != "labels"}
    packed = row_losses_and_grads(model, packed_inputs, labels, spans)
    one_sequence = {"input_ids": ids, "position_ids": torch.arange(ids.shape[1], device=ids.device)[None]}
    mixed = row_losses_and_grads(model, one_sequence, labels, spans)
    loss_err, grad_err, logit_err, control_loss, control_grad = [], [], [], [], []
    for (start, end), p, m in zip(spans, packed, mixed, strict=True):
        (alone,) = row_losses_and_grads(
            model, {"input_ids": ids[:, start:end]}, labels[start:end], [(0, end - start)]
        )
        norm = alone[1].norm()
        loss_err.append(abs(p[0] - alone[0]))
        grad_err.append(float((p[1] - alone[1]).norm() / norm))
        logit_err.append(float((p[2] - alone[2]).abs().max()))
        control_loss.append(abs(m[0] - alone[0]))
        control_grad.append(float((m[1] - alone[1]).norm() / norm))
    figures = {
        "backend": backend,
        "kernel": (
            attention.unsloth_packed_kernel() if backend == "unsloth" else dict(attention.kernel_calls)
        ),
        "rows": len(spans),
        "packed_tokens": int(ids.shape[1]),
        "max_loss_diff": max(loss_err),
        "max_grad_rel_diff": max(grad_err),
        "max_logit_diff": max(logit_err),
        # Row 0 sees nothing before it even as one sequence: the control's figures come from the rest.
        "control_max_loss_diff": max(control_loss[1:]),
        "control_max_grad_rel_diff": max(control_grad[1:]),
    }
    for key, value in figures.items():
        record(key, value)
    print(f"ISOLATION {figures}")
    assert max(loss_err) <= LOSS_TOL and max(grad_err) <= GRAD_TOL, figures
    assert max(control_grad[1:]) > max(GRAD_TOL, 3 * max(grad_err)), (
        f"the control did not mix rows: {figures}"
    )


def test_transformers_peft_bnb_packed_rows_are_isolated(
    gqa_model: Path, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    pytest.importorskip("bitsandbytes")
    if "unsloth" in sys.modules:
        pytest.skip(
            "unsloth, imported earlier in this process, patches transformers: run this test on its own"
        )
    check_isolation("transformers", gqa_model, tmp_path, record_property)
    assert attention.kernel_calls[attention.TORCH_VARLEN] > 0, dict(attention.kernel_calls)


def test_unsloth_packed_rows_are_isolated(
    gqa_model: Path, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    if importlib.util.find_spec("unsloth") is None:  # not importorskip: importing it now is too early
        pytest.skip("unsloth is not installed")
    check_isolation("unsloth", gqa_model, tmp_path, record_property)
    assert "torch varlen" in attention.unsloth_packed_kernel() or "flash" in attention.unsloth_packed_kernel()
