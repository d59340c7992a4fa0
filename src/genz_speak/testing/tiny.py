"""Tiny random-weight models, built locally in seconds, for tests and benchmarks (nothing downloads)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def student_tokenizer() -> Any:
    """SmolLM2's tokenizer and chat template: from the embedded GGUF, or from the folder that
    GENZ_STUDENT_TOKENIZER names (a saved copy, for the GPU machine: the 98 MB GGUF is more than one run
    there brings along)."""
    from transformers import AutoTokenizer

    from genz_speak.models import EMBEDDED_GGUF, embedded_student_dir, load_gguf_tokenizer

    saved = os.environ.get("GENZ_STUDENT_TOKENIZER")
    if saved:
        return AutoTokenizer.from_pretrained(saved)
    return load_gguf_tokenizer(embedded_student_dir() / EMBEDDED_GGUF)


def llama(
    out: Path,
    tokenizer: Any | None = None,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
    tie_word_embeddings: bool = True,
    vocab_size: int = 128,
    dtype: Any = None,
    device: str = "cpu",
    seed: int = 0,
) -> Path:
    """A random Llama (grouped-query attention: `heads` query heads share `kv_heads`) saved to `out`, with
    `tokenizer` (its vocabulary and special tokens) or, without one, `vocab_size` ids and no tokenizer.
    Built on `device` (a GPU builds benchmark-sized shapes fast), saved in `dtype` (None: float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from genz_speak.models import ensure_pad_token

    special: dict[str, Any] = {}
    if tokenizer is not None:
        ensure_pad_token(tokenizer)
        vocab_size = len(tokenizer)
        special = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        **special,
    )
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
