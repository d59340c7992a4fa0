"""Checking a GGUF file against the merged model it was converted from, the way its users meet it.

In llama.cpp (llama-cpp-python: the `llamacpp` extra, which the tests install): the file loads; its
tokenizer gives the merged folder's ids on probe strings (emoji, slang, accents, digits, whitespace) and on
chat prompts; its logits at every position of the check prompts stay within export.tolerance of
transformers' (and how often both rank the same token first, at every position and for the next token);
the chat template in the file, rendered as llama-cpp-python renders it, gives the folder's prompt; and the
prompt the Modelfile's TEMPLATE builds, tokenized as llama.cpp does for Ollama (its own BOS first), gives
the folder's tokens: no BOS doubled or missing.

Without llama-cpp-python: transformers' GGUF reader, only for the architectures it reads faithfully
(Llama with default rope, Qwen2). It drops Llama 3's rope scaling and misreads Qwen3's head_dim and Gemma
3's attention scale, so on those it would fail correct files: there nothing is checked, and the metrics
say which check ran.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genz_speak.data.chat import TEMPLATE_KWARGS, render
from genz_speak.export import ollama
from genz_speak.export.converter import gguf_chat_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Text llama.cpp must split as the folder's tokenizer does. Left out on purpose, as differences no export
# can remove: text that starts with a space (transformers 5's SentencePiece Llama skips the word-start
# marker there, sentencepiece and llama.cpp do not) and decomposed accents (Qwen's tokenizer normalises to
# NFC, llama.cpp does not); neither occurs in a chat prompt's text after its template's markers.
PROBES = (
    "Digits 1234567 and ünïcödé, emoji 🔥, tabs\tand  double  spaces.\n\nNew paragraph.",
    "no cap fr fr 💀😭 it's giving main character energy ✨ bestie, ate and left no crumbs",
    "café naïve résumé Zürich São Paulo crème brûlée déjà vu, Ａ fullwidth",
    "12 x 12 = 144; 3.14159; 2024-05-01; $20 €15 100% 1e6 -7",
    "line one\nline two\n\n\nthree newlines\r\nwindows\n",
    "I'm sure you'll love it; THEY'VE said we'd go. You're RIGHT, isn't it?",
    "😶‍🌫️ 👍🏽 ❤️ 🇫🇷 zwj and skin tones",
    "Greek αβγ, привет мир, 我想在apple工作, こんにちは, 안녕하세요",
    "Python:\n    def add(a, b):\n        return a + b\n\tprint(add(1, 2))",
    "hi",
)
# model_type -> what transformers' GGUF reader gets right, for the check without llama.cpp
_READ_FAITHFULLY = {"llama", "qwen2"}


def has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def logits(model: Any, inputs: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(**inputs).logits.float()


def _rows(inputs: Any, reference_logits: Any) -> list[tuple[list[int], Any]]:
    """Each check prompt's ids and transformers' logits at its real (unpadded) positions."""
    mask = inputs["attention_mask"].bool()
    return [
        (inputs["input_ids"][i][mask[i]].tolist(), reference_logits[i][mask[i]].numpy())
        for i in range(mask.shape[0])
    ]


def _token_problems(tokenizer: PreTrainedTokenizerBase, encode: Any, texts: list[str]) -> list[str]:
    problems = []
    for text in texts:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = encode(text)
        if ours != theirs:
            problems.append(f"tokenizes {text[:60]!r} differently ({len(theirs)} vs {len(ours)} tokens)")
    return problems


def check_llama_cpp(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    chat: ollama.ChatFormat,
    prompts: list[str],
    inputs: Any,
    reference_logits: Any,
) -> dict[str, Any]:
    """The GGUF file in llama.cpp against the merged folder (see the module docstring); `inputs` are
    `prompts` tokenized, `reference_logits` the merged model's on them."""
    import llama_cpp
    import numpy as np
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    rows = _rows(inputs, reference_logits)
    longest = max(len(ids) for ids, _ in rows)
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=max(512, longest + 16), logits_all=True, n_threads=1, verbose=False
    )
    try:
        conversations = [render(tokenizer, m) for m in ollama.PROBES]
        texts = [*PROBES, *conversations, *prompts]
        problems = _token_problems(
            tokenizer, lambda t: llm.tokenize(t.encode(), add_bos=False, special=True), texts
        )
        for messages, expected in zip(ollama.PROBES, conversations, strict=True):
            served = chat.render(messages).removeprefix(chat.bos)  # the Modelfile's TEMPLATE, no BOS
            ids = llm.tokenize(served.encode(), add_bos=True, special=True)
            if ids != tokenizer(expected, add_special_tokens=False)["input_ids"]:
                problems.append(f"the Modelfile's prompt for {messages!r}, tokenized by llama.cpp, differs")
        special = {
            k: llm.detokenize([i], special=True).decode() if i >= 0 else ""
            for k, i in (("bos_token", llm.token_bos()), ("eos_token", llm.token_eos()))
        }
        formatter = Jinja2ChatFormatter(llm.metadata.get("tokenizer.chat_template", ""), **special)
        # The date Llama 3's template stamps is today's at serving time; the comparison fixes it.
        date = {"date_string": TEMPLATE_KWARGS["date_string"]}
        for messages, expected in zip(ollama.PROBES, conversations, strict=True):
            if formatter(messages=messages, **date).prompt != expected:
                problems.append(f"the file's chat template renders {messages!r} differently")
        top1 = positions = last = 0
        diff = 0.0
        for ids, theirs in rows:
            llm.reset()
            llm.eval(ids)
            ours = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
            diff = max(diff, float(np.abs(ours - theirs).max()))
            top1 += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            positions += len(ids)
            last += int(ours[-1].argmax() == theirs[-1].argmax())
    finally:
        llm.close()
    return {
        "check": "llama.cpp",
        "max_logit_diff": diff,
        "top1_agreement": top1 / positions,
        "next_token_agreement": last / len(rows),
        "token_texts": len(texts),
        "tokenizer_problems": problems,
    }


def check_transformers(
    path: Path, tokenizer: PreTrainedTokenizerBase, config: Any, inputs: Any, reference_logits: Any
) -> dict[str, Any]:
    """The fallback without llama.cpp: the file reloaded through transformers, where that reader is
    faithful to the merged model's `config` (else no check, said in the result). Decided on the merged
    folder's config: the config transformers reads back from the file has already lost what it drops."""
    import torch
    from transformers import AutoModelForCausalLM

    from genz_speak.models import load_gguf_tokenizer

    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if config.model_type not in _READ_FAITHFULLY or rope != "default":
        reason = f"transformers' GGUF reader does not read {config.model_type} ({rope} rope) faithfully"
        log.warning("%s: not checked: %s; install the llamacpp extra to check it", path.name, reason)
        return {"check": f"none: {reason}", "tokenizer_problems": []}
    other = load_gguf_tokenizer(path)
    problems = [] if other.chat_template == gguf_chat_template(tokenizer.chat_template) else ["chat template"]
    texts = [*PROBES, *(render(tokenizer, m) for m in ollama.PROBES)]
    problems += _token_problems(tokenizer, lambda t: other(t, add_special_tokens=False)["input_ids"], texts)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    out = logits(model.eval(), inputs)
    mask = inputs["attention_mask"].bool()
    last = mask.sum(-1) - 1
    rows = torch.arange(mask.shape[0])
    return {
        "check": "transformers",
        "max_logit_diff": float((out - reference_logits).abs()[mask].max()),
        "top1_agreement": float((out.argmax(-1) == reference_logits.argmax(-1))[mask].float().mean()),
        "next_token_agreement": float(
            (out[rows, last].argmax(-1) == reference_logits[rows, last].argmax(-1)).float().mean()
        ),
        "token_texts": len(texts),
        "tokenizer_problems": problems,
    }
