"""Tiny random-weight models, built locally in seconds, for tests and benchmarks (nothing downloads)."""

from __future__ import annotations

import json
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


# -------------------------------------------------------------------------------------- student families
# Five families a user is likely to bring, each a 2-layer, hidden-64 model of the family's real config
# class with random weights, a tokenizer trained here in the family's format and the family's real chat
# template (templates/: Llama 3.2, Qwen2.5 and Qwen3 from llama.cpp's models/templates in the
# llama-cpp-python 0.3.36 sdist; Gemma 3 from transformers' Gemma 3 conversion script).
TEMPLATES = Path(__file__).with_name("templates")
FAMILIES = ("llama_spm", "llama3", "qwen25", "qwen3", "gemma3")


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _randomize(model: Any, seed: int) -> Any:
    """Random weights with spread everywhere: transformers' init zeroes biases and sets norms to one
    (Gemma's to zero), which would leave Qwen's q/k/v biases, Qwen3's q/k norms and Gemma's 1 + w norm
    shift invisible to a logit comparison."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
    return model


def _shape(**extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **extra,
    }


def _save(out: Path, model: Any, tok: Any, spm_file: Path | None = None) -> Path:
    import shutil

    model.save_pretrained(out)
    tok.save_pretrained(out)
    if spm_file is not None:  # as the hub's snapshots ship it beside tokenizer.json
        shutil.copyfile(spm_file, out / "tokenizer.model")
    return out


def llama_spm(out: Path) -> Path:
    """TinyLlama's shape as a base model: Llama, a SentencePiece BPE vocabulary with byte fallback and a
    dummy prefix (<unk> 0, <s> 1, </s> 2, `legacy: false` as TinyLlama's tokenizer_config), an untied
    lm_head, and no chat template."""
    import tempfile

    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from genz_speak.testing.tokenizers import sentencepiece_bpe

    with tempfile.TemporaryDirectory() as work:
        spm_file, vocab, merges = sentencepiece_bpe(
            Path(work), 1000, add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1
        )
        tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_bos_token=True)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
        tok.chat_template = None
        cfg = LlamaConfig(
            vocab_size=len(tok),
            max_position_embeddings=2048,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
            **_shape(),
        )
        return _save(out, _randomize(LlamaForCausalLM(cfg), 1), tok, spm_file)


_LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)


def llama3(out: Path) -> Path:
    """Llama 3.2: rope_type llama3 (scaled low frequencies), byte-level BPE with Llama 3's split and
    ignore_merges, <|begin_of_text|> added by the post-processor, turns ending in <|eot_id|>."""
    from tokenizers import AddedToken, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from genz_speak.testing.tokenizers import LLAMA3_PATTERN, byte_level_bpe

    backend = byte_level_bpe(LLAMA3_PATTERN, 1500, nfc=False, ignore_merges=True)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _LLAMA3_SPECIALS])
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",  # Llama-3.2-*-Instruct's tokenizer_config
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = _template("meta-llama-Llama-3.2-3B-Instruct.jinja")
    eos = [tok.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    # Llama 3.2's rope scaling with a small original context, so that the scaled frequencies move the
    # logits of short prompts (Llama 3.2 itself: factor 32, original 8192).
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0}
    rope |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    cfg = LlamaConfig(
        vocab_size=len(tok),
        head_dim=16,
        max_position_embeddings=131072,
        rope_parameters=rope,
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=True,
        **_shape(),
    )
    return _save(out, _randomize(LlamaForCausalLM(cfg), 2), tok)


_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
_QWEN_PLAIN = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")


def _qwen_tokenizer(plain: tuple[str, ...]) -> Any:
    """Qwen2.5 / Qwen3's tokenizer: NFC, Qwen's split (single digits), byte-level BPE; <|...|> tokens
    special, <tool_call>, <think> and the like added but not special (as in their tokenizer_config)."""
    from tokenizers import AddedToken, processors
    from transformers import Qwen2Tokenizer

    from genz_speak.testing.tokenizers import QWEN2_PATTERN, byte_level_bpe

    backend = byte_level_bpe(QWEN2_PATTERN, 1500, nfc=True, ignore_merges=False)
    merges = [tuple(m) for m in json.loads(backend.to_str())["model"]["merges"]]
    tok = Qwen2Tokenizer(
        vocab=backend.get_vocab(), merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in _QWEN_SPECIALS], True)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _qwen_ids(tok: Any) -> dict[str, Any]:
    ends = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return {
        "vocab_size": len(tok),
        "bos_token_id": ends[1],
        "eos_token_id": ends,
        "tie_word_embeddings": True,
    }


def qwen25(out: Path) -> Path:
    """Qwen2.5: Qwen2ForCausalLM, whose q/k/v projections carry biases; tied embeddings as the 0.5B."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _qwen_tokenizer(_QWEN_PLAIN)
    tok.chat_template = _template("Qwen-Qwen2.5-7B-Instruct.jinja")
    cfg = Qwen2Config(max_position_embeddings=32768, use_sliding_window=False, **_qwen_ids(tok), **_shape())
    return _save(out, _randomize(Qwen2ForCausalLM(cfg), 3), tok)


def qwen3(out: Path) -> Path:
    """Qwen3: per-head q/k norms, no biases, head_dim set apart from hidden/heads; the template with the
    enable_thinking switch."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = _qwen_tokenizer((*_QWEN_PLAIN, "<think>", "</think>"))
    tok.chat_template = _template("Qwen-Qwen3-0.6B.jinja")
    cfg = Qwen3Config(head_dim=16, max_position_embeddings=40960, **_qwen_ids(tok), **_shape())
    return _save(out, _randomize(Qwen3ForCausalLM(cfg), 4), tok)


def gemma3(out: Path) -> Path:
    """Gemma 3 text (Gemma3ForCausalLM, model_type gemma3_text): sliding-window attention (both layers,
    as five of every six in Gemma 3, with a window short enough to cut into test prompts), q/k norms,
    1 + w norms; a SentencePiece vocabulary without a dummy prefix (<pad> 0, <eos> 1, <bos> 2, <unk> 3)
    and turn markers; a template with no system role (it folds a system message into the first user
    turn)."""
    import tempfile

    from tokenizers import AddedToken, processors
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GemmaTokenizer

    from genz_speak.testing.tokenizers import sentencepiece_bpe

    turns = ["<start_of_turn>", "<end_of_turn>"]
    with tempfile.TemporaryDirectory() as work:
        spm_file, vocab, merges = sentencepiece_bpe(
            Path(work),
            1200,
            add_dummy_prefix=False,
            **{f"{k}_id": i for i, k in enumerate(("pad", "eos", "bos", "unk"))},
            **{f"{k}_piece": f"<{k}>" for k in ("pad", "eos", "bos", "unk")},
            user_defined_symbols=["<mask>", *turns],
        )
        tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in turns], True)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
        )
        tok.chat_template = _template("google-gemma-3-it.jinja")
        rope = {"rope_type": "default"}
        cfg = Gemma3TextConfig(
            vocab_size=len(tok),
            head_dim=16,
            # llama.cpp scales attention by 1/sqrt(head_dim) (Gemma 3 27B aside): 1B-12B have
            # query_pre_attn_scalar == head_dim, so the tiny model keeps them equal too.
            query_pre_attn_scalar=16,
            sliding_window=8,
            max_position_embeddings=32768,
            rope_parameters={
                "full_attention": {**rope, "rope_theta": 1000000.0},
                "sliding_attention": {**rope, "rope_theta": 10000.0},
            },
            pad_token_id=0,
            eos_token_id=[1, tok.convert_tokens_to_ids("<end_of_turn>")],
            bos_token_id=2,
            tie_word_embeddings=True,
            **_shape(num_key_value_heads=1),
        )
        return _save(out, _randomize(Gemma3ForCausalLM(cfg), 5), tok, spm_file)


def family(name: str, out: Path) -> Path:
    """Build the tiny student of family `name` (one of FAMILIES) in `out`."""
    return {"llama_spm": llama_spm, "llama3": llama3, "qwen25": qwen25, "qwen3": qwen3, "gemma3": gemma3}[
        name
    ](out)
