"""Variable-length attention (genz_speak.training.attention) on CPU: packed rows give the logits, loss and
gradients of each row run alone; padded batches and generation are plain sdpa; the Unsloth keyword shim.

torch's varlen kernel itself is CUDA-only: tests/gpu/test_packed_isolation.py holds it (and Unsloth's
packed path) to the same standard on a GPU. Here the per-sequence SDPA fallback runs, and a CPU stand-in
with torch 2.11's and 2.12's signatures checks what our code hands the kernel.
"""

from __future__ import annotations

import inspect
import itertools
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from genz_speak.config import TrainConfig
from genz_speak.errors import InputError
from genz_speak.testing import tiny
from genz_speak.training import attention

LENGTHS = (7, 1, 12, 5)  # one single-token row: its only token attends to itself


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with grouped-query attention (4 query heads share 2 K/V heads)."""
    return tiny.llama(tmp_path_factory.mktemp("gqa-llama"), vocab_size=128, max_positions=256)


def load(path: Path, implementation: str) -> Any:
    from transformers import AutoModelForCausalLM

    attention.register()
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=implementation, dtype=torch.float32)


def rows(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (n,), generator=g) for n in LENGTHS]


def packed_inputs(parts: list[torch.Tensor], boundaries: str) -> dict[str, Any]:
    """One padding-free row, as TRL's collator builds it: position_ids restart per row; TRL >= 1.16 also
    sends the cumulative lengths."""
    inputs: dict[str, Any] = {
        "input_ids": torch.cat(parts)[None],
        "position_ids": torch.cat([torch.arange(len(p)) for p in parts])[None],
    }
    if boundaries == "cu_seq_lens":
        cu = torch.tensor([0, *torch.tensor([len(p) for p in parts]).cumsum(0)], dtype=torch.int32)
        longest = max(len(p) for p in parts)
        inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    return inputs


def row_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss of one row (a single token has nothing to predict: 0)."""
    return F.cross_entropy(logits[:-1], ids[1:], reduction="sum")


def spans() -> list[tuple[int, int]]:
    ends = torch.tensor(LENGTHS).cumsum(0).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))


@pytest.mark.parametrize(
    ("position_ids", "batch", "expected"),
    [
        ([[0, 1, 2, 0, 1, 0, 1, 2, 3]], 1, (3, 2, 4)),
        ([[0, 1, 2, 0, 0, 0]], 1, (3, 1, 1, 1)),  # TRL pads position_ids with 0: each pad token alone
        ([[0, 1, 0, 1], [0, 1, 2, 0]], 2, (2, 2, 3, 1)),  # every row starts a sequence
        ([[0, 1, 2, 3], [0, 1, 2, 3]], 2, None),  # plain rows
        ([[0, 1, 2, 3]], 2, None),  # one position row broadcast over the batch
        ([[5, 6, 7]], 1, None),  # positions may start anywhere: they continue, one sequence
    ],
)
def test_sequences_start_where_positions_do_not_continue(
    position_ids: list[list[int]], batch: int, expected: tuple[int, ...] | None
) -> None:
    pos = torch.tensor(position_ids)
    found = attention.segments_from_position_ids(pos, batch, pos.shape[-1])
    if expected is None:
        assert found is None
        return
    assert found is not None and found.lengths == expected and found.max_len == max(expected)
    assert found.cu_seqlens.dtype == torch.int32
    assert found.cu_seqlens.tolist() == [0, *torch.tensor(expected).cumsum(0).tolist()]


@pytest.mark.parametrize("boundaries", ["position_ids", "cu_seq_lens"])
def test_packed_rows_equal_rows_alone(llama_dir: Path, boundaries: str) -> None:
    """Logits, loss and gradients of each packed row equal that row run alone through plain sdpa."""
    model, ref = load(llama_dir, attention.VARLEN).train(), load(llama_dir, "sdpa").train()
    parts = rows()
    before = attention.kernel_calls[attention.SDPA_SEGMENTS]
    logits = model(**packed_inputs(parts, boundaries)).logits[0]
    assert attention.kernel_calls[attention.SDPA_SEGMENTS] == before + 2  # both layers, one forward
    for (start, end), ids in zip(spans(), parts, strict=True):
        model.zero_grad()
        ref.zero_grad()
        packed_loss = row_loss(logits[start:end], ids)
        packed_loss.backward(retain_graph=True)
        alone = ref(input_ids=ids[None]).logits[0]
        alone_loss = row_loss(alone, ids)
        if len(ids) > 1:
            alone_loss.backward()
        torch.testing.assert_close(logits[start:end], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-5)
        for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            got = p.grad if p.grad is not None else torch.zeros_like(p)
            want = q.grad if q.grad is not None else torch.zeros_like(q)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4, msg=f"{name}, row of {len(ids)}")


def test_sdpa_lets_packed_rows_see_each_other(llama_dir: Path) -> None:
    """Why padding-free batches need genz_varlen: in training mode (a KV cache object exists), sdpa's
    mask ignores the position_ids restarts and later rows attend to earlier ones."""
    parts = rows()
    inputs = packed_inputs(parts, "position_ids")
    start, end = spans()[2]
    alone = load(llama_dir, "sdpa").train()(input_ids=parts[2][None]).logits[0]
    mixed = load(llama_dir, "sdpa").train()(**inputs).logits[0, start:end]
    isolated = load(llama_dir, attention.VARLEN).train()(**inputs).logits[0, start:end]
    assert (mixed - alone).abs().max() > 1e-2
    assert (isolated - alone).abs().max() < 1e-5


def test_padded_batches_and_generation_are_plain_sdpa(llama_dir: Path) -> None:
    model, ref = load(llama_dir, attention.VARLEN).eval(), load(llama_dir, "sdpa").eval()
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # left padding, as generation pads
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        want = ref(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        greedy = {"attention_mask": mask, "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(model.generate(input_ids=ids, **greedy), ref.generate(input_ids=ids, **greedy))


def _varlen_stand_in(gqa_keyword: bool, seen: list[dict[str, Any]]) -> Any:
    """A CPU stand-in for torch.nn.attention.varlen.varlen_attn with torch 2.11's signature (no
    enable_gqa) or 2.12's: causal when window_size == (-1, 0); it records what it was handed."""

    def reference(q, k, v, cu_q, cu_k, max_q, max_k, scale, window_size, enable_gqa) -> torch.Tensor:
        seen.append({"q": q, "k": k, "cu": cu_q, "max": max_q, "window": window_size, "gqa": enable_gqa})
        assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16)
        assert enable_gqa or q.shape[1] == k.shape[1]
        bounds = cu_q.tolist()
        outs = [
            F.scaled_dot_product_attention(
                *(x[a:b].transpose(0, 1).float() for x in (q, k, v)),
                is_causal=tuple(window_size) == (-1, 0),
                scale=scale,
                enable_gqa=enable_gqa,
            )
            for a, b in itertools.pairwise(bounds)
        ]
        return torch.cat(outs, dim=1).transpose(0, 1).to(q.dtype)

    if gqa_keyword:

        def varlen_attn(
            q,
            k,
            v,
            cu_q,
            cu_k,
            max_q,
            max_k,
            *,
            return_aux=None,
            scale=None,
            window_size=(-1, -1),
            enable_gqa=False,
        ):
            return reference(q, k, v, cu_q, cu_k, max_q, max_k, scale, window_size, enable_gqa)
    else:

        def varlen_attn(
            q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)
        ):
            return reference(q, k, v, cu_q, cu_k, max_q, max_k, scale, window_size, False)

    return varlen_attn


@pytest.mark.parametrize("gqa_keyword", [False, True], ids=["torch 2.11", "torch 2.12+"])
def test_what_the_varlen_kernel_is_handed(monkeypatch: pytest.MonkeyPatch, gqa_keyword: bool) -> None:
    """Flattened (T, H, D) inputs in bf16 (the fp32 that k-bit training leaves is cast), the K/V heads
    repeated unless the kernel takes enable_gqa, causal window, int32 boundaries; output back in fp32."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(attention, "_varlen_attn", lambda: _varlen_stand_in(gqa_keyword, seen))
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, h, 25, 16, generator=g) for h in (4, 2, 2))
    segments = attention.segments_from_position_ids(
        torch.cat([torch.arange(n) for n in LENGTHS])[None], 1, sum(LENGTHS)
    )
    assert segments is not None
    got = attention._torch_varlen(q, k, v, segments, 0.25, True, torch.bfloat16)
    want = attention._sdpa_segments(q, k, v, segments, 0.25, True, 0.0)
    assert got.dtype == torch.float32 and got.shape == (25, 4, 16)
    torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)  # bf16 rounding of q, k, v
    (call,) = seen
    assert call["q"].shape == (25, 4, 16) and call["k"].shape == (25, 2 if gqa_keyword else 4, 16)
    assert call["gqa"] is gqa_keyword and tuple(call["window"]) == (-1, 0)
    assert call["cu"].tolist() == [0, 7, 8, 20, 25] and call["max"] == 12


def test_unsloth_gets_an_enable_gqa_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.11's varlen_attn gets a wrapper that passes Unsloth 2026.10.9's signature check and
    repeats K/V heads; a torch whose varlen_attn already takes enable_gqa is left alone."""
    import torch.nn.attention.varlen as varlen_module

    monkeypatch.delitem(sys.modules, "unsloth.utils.attention_dispatch", raising=False)
    real = varlen_module.varlen_attn
    attention.allow_unsloth_torch_varlen()
    assert varlen_module.varlen_attn is real  # this torch (2.13) takes enable_gqa: nothing to do

    seen: list[dict[str, Any]] = []
    torch_211 = _varlen_stand_in(False, seen)
    monkeypatch.setattr(varlen_module, "varlen_attn", torch_211)
    attention.allow_unsloth_torch_varlen()
    wrapped = varlen_module.varlen_attn
    params = inspect.signature(wrapped).parameters
    assert "window_size" in params and "enable_gqa" in params  # what Unsloth's _load_torch_varlen_attn asks
    attention.allow_unsloth_torch_varlen()
    assert varlen_module.varlen_attn is wrapped  # installed once

    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(9, h, 16, generator=g, dtype=torch.bfloat16) for h in (4, 2, 2))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    out = wrapped(q, k, v, cu, cu, 5, 5, scale=0.5, window_size=(-1, 0), enable_gqa=True)
    assert out.shape == (9, 4, 16) and seen[-1]["k"].shape == (9, 4, 16)
    torch.testing.assert_close(seen[-1]["k"][:, 2], k[:, 1])  # query heads 2 and 3 read K/V head 1
    torch.testing.assert_close(seen[-1]["k"][:, 3], k[:, 1])


def test_unsloth_imported_first_is_not_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.attention.varlen as varlen_module

    torch_211 = _varlen_stand_in(False, [])
    monkeypatch.setattr(varlen_module, "varlen_attn", torch_211)
    monkeypatch.setitem(sys.modules, "unsloth.utils.attention_dispatch", object())
    attention.allow_unsloth_torch_varlen()  # too late: Unsloth has read varlen_attn already
    assert varlen_module.varlen_attn is torch_211


def test_the_train_config_picks_genz_varlen_for_padding_free_batches() -> None:
    assert replace(TrainConfig(), packing=True).padding_free_batches is True
    assert replace(TrainConfig(), packing=True, packing_strategy="wrapped").padding_free_batches is False
    assert replace(TrainConfig(), padding_free=True).padding_free_batches is True
    assert TrainConfig().padding_free_batches is None
    assert attention.isolates_rows(attention.VARLEN) and attention.isolates_rows("flash_attention_2")
    assert not attention.isolates_rows("sdpa") and not attention.isolates_rows(None)


def pretokenized(n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Instruction-like rows: lengths 10-60 tokens, the last 60% of each the completion."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(10, 60, (1,), generator=g))
        ids = torch.randint(100, 1000, (length,), generator=g).tolist()
        prompt = int(length * 0.4)
        out.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (length - prompt)})
    return out


def test_packed_training_through_the_trainer(tiny_model: Path, tmp_path: Path) -> None:
    """bfd packing on the transformers backend: the model loads with genz_varlen, the collator's packed
    batch gives each row's loss as alone (through the LoRA model), and training steps run."""
    from datasets import Dataset

    from genz_speak.training import backends
    from genz_speak.training.sft import build_trainer

    cfg = replace(
        TrainConfig(),
        backend="transformers",
        packing=True,
        batch_size=2,
        max_seq_length=128,
        max_steps=2,
        cpu_precision="fp32",  # exact comparison below: bf16 autocast (the default on AMX CPUs) rounds
    )
    prepared = backends.load("transformers", tiny_model, cfg)
    assert prepared.model.config._attn_implementation == attention.VARLEN
    trainer, micro, accum = build_trainer(
        cfg, "transformers", prepared, Dataset.from_list(pretokenized(24)), None, tmp_path, []
    )
    assert (micro, accum) == (2, 1)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.train()
    starts = [*(batch["position_ids"][0] == 0).nonzero().flatten().tolist(), batch["input_ids"].shape[1]]
    assert len(starts) > 3  # several rows in the packed micro-batch
    with torch.no_grad():
        logits = model(**batch).logits[0]
        for a, b in itertools.pairwise(starts):
            alone = model(input_ids=batch["input_ids"][:, a:b]).logits[0]
            torch.testing.assert_close(logits[a:b], alone, atol=1e-5, rtol=1e-5)
    before = attention.kernel_calls.copy()
    trainer.train()
    used = attention.kernel_calls - before
    assert used[attention.SDPA_SEGMENTS] > 0 and trainer.state.global_step == 2


def test_padding_free_under_sdpa_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    from datasets import Dataset

    from genz_speak.training import backends
    from genz_speak.training.sft import build_trainer

    cfg = replace(TrainConfig(), backend="transformers", packing=True, attn_implementation="sdpa")
    prepared = backends.load("transformers", tiny_model, cfg)
    with pytest.raises(InputError, match=r"train.attn_implementation: sdpa lets the rows of a padding-free"):
        build_trainer(cfg, "transformers", prepared, Dataset.from_list(pretokenized(4)), None, tmp_path, [])


def test_the_micro_batch_probe_packs_like_the_collator(llama_dir: Path) -> None:
    """A padding-free probe is one row of `micro` full-length sequences, which genz_varlen keeps apart."""
    from genz_speak.training.sft import probe_batch

    batch = probe_batch(3, 8, True, "cpu")
    assert batch["input_ids"].shape == (1, 24) and batch["position_ids"][0].tolist() == list(range(8)) * 3
    assert probe_batch(3, 8, False, "cpu")["input_ids"].shape == (3, 8)
    model = load(llama_dir, attention.VARLEN).train()
    before = attention.kernel_calls[attention.SDPA_SEGMENTS]
    model(**{k: v % 128 for k, v in batch.items() if k != "position_ids"}, position_ids=batch["position_ids"])
    assert attention.kernel_calls[attention.SDPA_SEGMENTS] == before + 2


def test_boundaries_sent_by_the_collator_are_used_as_sent() -> None:
    """TRL >= 1.16 sends cu_seq_lens_q; read once per forward, it wins over position_ids. Boundaries that
    do not cover the row are ignored in favour of position_ids."""
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    position_ids = torch.tensor([[0, 1, 0, 1, 2]])  # disagrees on purpose
    found = attention._segments(1, 5, {"cu_seq_lens_q": cu, "position_ids": position_ids})
    assert found is not None and found.lengths == (3, 2)
    assert attention._segments(1, 5, {"cu_seq_lens_q": cu, "position_ids": position_ids}) is found
    short = torch.tensor([0, 3], dtype=torch.int32)
    found = attention._segments(1, 5, {"cu_seq_lens_q": short, "position_ids": position_ids})
    assert found is not None and found.lengths == (2, 3)
