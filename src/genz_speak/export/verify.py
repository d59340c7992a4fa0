"""Checking a GGUF file against the merged model it was written from: reloaded through transformers, as a
user would, its logits on held-out prompts and its tokenizer (rebuilt from the file's metadata, as
llama.cpp reads it) must agree with the merged folder's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from genz_speak.export import ollama
from genz_speak.models import load_gguf_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")
# Beside the check prompts: digits, accents, emoji, tabs and runs of spaces, where pre-tokenizers differ.
TOKENIZER_PROBE = "Digits 1234567 and ünïcödé, emoji 🔥, tabs\tand  double  spaces.\n\nNew paragraph."


def tokenizer_agreement(
    reference: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase, texts: list[str]
) -> list[str]:
    """How the tokenizer rebuilt from a GGUF disagrees with the merged model's (empty: it does not)."""
    problems = []
    if other.chat_template != reference.chat_template:
        problems.append("chat template differs")
    for messages in ollama.PROBES:
        kw: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if other.apply_chat_template(messages, **kw) != reference.apply_chat_template(messages, **kw):
            problems.append(f"chat template renders {messages!r} differently")
    for attr in _SPECIAL:
        if getattr(other, attr) != getattr(reference, attr):
            problems.append(f"{attr} {getattr(other, attr)!r} != {getattr(reference, attr)!r}")
    for text in texts:
        a = reference(text, add_special_tokens=False)["input_ids"]
        b = other(text, add_special_tokens=False)["input_ids"]
        if a != b:
            problems.append(f"tokenizes {text[:60]!r} differently ({len(b)} vs {len(a)} tokens)")
    return problems


def logits(model: Any, inputs: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(**inputs).logits.float()


def check_gguf(
    path: Path, reference_logits: Any, tokenizer: PreTrainedTokenizerBase, inputs: Any, texts: list[str]
) -> dict[str, Any]:
    """Reload a GGUF file through transformers and compare it with the merged model: max |logit diff| and
    how often the most likely next token agrees, over the prompts' real positions; how its tokenizer
    disagrees with the merged model's."""
    import torch
    from transformers import AutoModelForCausalLM

    other_tok = load_gguf_tokenizer(path)  # as llama.cpp reads it (transformers 5.17 takes the wrong EOS)
    problems = tokenizer_agreement(tokenizer, other_tok, texts)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    out = logits(model, inputs)
    mask = inputs["attention_mask"].bool()
    return {
        "max_logit_diff": float((out - reference_logits).abs()[mask].max()),
        "top1_agreement": float((out.argmax(-1) == reference_logits.argmax(-1))[mask].float().mean()),
        "tokenizer_problems": problems,
    }
