"""Merging a LoRA adapter onto its base reloaded in 16-bit (never onto 4-bit weights): with peft, or with
Unsloth's merged 16-bit save on CUDA."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

from genz_speak.config import MergeConfig
from genz_speak.errors import ParamError

log = logging.getLogger(__name__)

MergeBackend = Literal["peft", "unsloth"]


def resolve_backend(cfg: MergeConfig, base_dir: Path) -> MergeBackend:
    """merge.backend resolved for this machine and base; a choice it cannot honour is a params error."""
    import torch

    from genz_speak.models import stored_dtype

    # Unsloth's merged_16bit save writes each merged tensor in the base's stored dtype whatever dtype
    # it is asked for, so it can honour merge.dtype only when the base is stored in that dtype.
    base_dtype = stored_dtype(base_dir)
    if cfg.backend == "unsloth":
        if not torch.cuda.is_available():
            raise ParamError("merge.backend", "unsloth needs a CUDA GPU; use auto or peft here")
        if base_dtype != cfg.dtype:
            raise ParamError(
                "merge.backend",
                f"unsloth writes the base's stored dtype ({base_dtype}), not "
                f"merge.dtype: {cfg.dtype}; set prepare.base_dtype: {cfg.dtype} or merge.backend: peft",
            )
    if cfg.backend == "auto":
        if not (torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None):
            return "peft"
        if base_dtype != cfg.dtype:
            log.info("merge.backend auto -> peft: the base is stored in %s, not %s", base_dtype, cfg.dtype)
            return "peft"
        return "unsloth"
    return cfg.backend


def base_with_adapter(base_dir: Path, adapter_dir: Path, dtype: Any) -> Any:
    """The 16-bit base with the unmerged adapter, computed in float32: what a merged model should equal,
    so a check against it measures what merging and rounding cost, not the base's own rounding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).float(), adapter_dir
    )


def save_merged(
    backend: MergeBackend, base_dir: Path, adapter_dir: Path, out: Path, dtype: Any, tokenizer: Any
) -> None:
    """Write base + adapter, merged in `dtype`, as one model folder at `out`."""
    from genz_speak.models import strip_environment

    if backend == "unsloth":
        from unsloth import FastLanguageModel

        # Unsloth reloads the base in 16-bit itself, never merging into 4-bit.
        model, tok = FastLanguageModel.from_pretrained(str(adapter_dir), load_in_4bit=False, dtype=dtype)
        model.save_pretrained_merged(str(out), tok, save_method="merged_16bit")
        strip_environment(out)
    else:
        _save_with_peft(base_dir, adapter_dir, out, dtype, tokenizer)
    spm = base_dir / "tokenizer.model"
    if spm.is_file() and not (out / "tokenizer.model").exists():
        # transformers 5 does not write a SentencePiece tokenizer.model; llama.cpp's converter reads it.
        shutil.copyfile(spm, out / "tokenizer.model")


def _save_with_peft(base_dir: Path, adapter_dir: Path, out: Path, dtype: Any, tokenizer: Any) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from genz_speak.models import save_tokenizer

    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype), adapter_dir
    ).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    merged.generation_config.save_pretrained(out)
