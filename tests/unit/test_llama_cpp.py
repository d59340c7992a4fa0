"""The GGUF files llama.cpp's converter writes, in llama.cpp itself (through llama-cpp-python, a dev
dependency built from source by scripts/setup.sh): same tokens, same logits as transformers, and a chat
completion rendered with the chat template from the file's metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python: bash scripts/setup.sh tests")

MESSAGES = [{"role": "user", "content": "Why is the sky blue? Answer in 2 sentences, with 123 in it."}]


@pytest.fixture(scope="module")
def exported(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """The tiny model stored in float16 (as merge writes it) and its f16 and q8_0 GGUF files."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genz_speak.export import converter

    out = tmp_path_factory.mktemp("llama-cpp")
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float16).save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    staged = converter.stage(out, out / "staged", tok, tok.chat_template, "apache-2.0")
    files = {fmt: out / f"m-{fmt}.gguf" for fmt in ("f16", "q8_0")}
    converter.convert(staged, files, name="m", tokenizer_pre=None)
    return out, model, tok


@pytest.mark.parametrize("fmt", ["f16", "q8_0"])
def test_llama_cpp_reads_the_file_like_transformers(exported: tuple[Path, Any, Any], fmt: str) -> None:
    import torch

    out, model, tok = exported
    llm = llama_cpp.Llama(
        model_path=str(out / f"m-{fmt}.gguf"), n_ctx=256, logits_all=True, n_threads=1, verbose=False
    )
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    # the vocabulary, merges, special tokens and pre-tokenizer name as llama.cpp understands them
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    assert llm.metadata["tokenizer.chat_template"] == tok.chat_template
    llm.eval(ids)
    ours = np.array(llm.scores[: len(ids)])
    with torch.inference_mode():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    # q8_0: llama.cpp also quantizes the activations to 8 bits in its dot products
    assert float(np.abs(ours - theirs).max()) < {"f16": 0.01, "q8_0": 0.05}[fmt]
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.95


def test_llama_cpp_chats_with_the_file_template(exported: tuple[Path, Any, Any]) -> None:
    out, _, tok = exported
    llm = llama_cpp.Llama(model_path=str(out / "m-q8_0.gguf"), n_ctx=256, n_threads=1, verbose=False, seed=0)
    reply = llm.create_chat_completion(messages=MESSAGES, max_tokens=8, temperature=0.0)
    assert reply["choices"][0]["message"]["role"] == "assistant"
    prompt = tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    assert reply["usage"]["prompt_tokens"] == len(prompt["input_ids"])  # the same prompt as transformers
    assert reply["usage"]["completion_tokens"] >= 1
