"""merge: the LoRA adapter merged onto the 16-bit base -> a deployable model folder, reloaded and checked
against base + adapter before it is put in place."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genz_speak.config import MergeConfig
from genz_speak.data.chat import encoded_prompts
from genz_speak.data.dataset import read_split
from genz_speak.errors import StageFailed
from genz_speak.io import atomic_dir
from genz_speak.training.merge import base_with_adapter, resolve_backend, save_merged

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    base: Path  # prepare's base model folder
    adapter: Path  # train's LoRA adapter
    heldout: Path  # prepare's held-out questions: the first merge.check_prompts are compared on
    out: Path  # the merged model folder


def run(cfg: MergeConfig, paths: Paths) -> dict[str, Any]:
    """Write base + adapter as one model folder; fail, writing nothing, when the saved folder disagrees
    with base + adapter by more than merge.tolerance."""
    import torch
    from transformers import AutoModelForCausalLM

    from genz_speak.models import device, load_tokenizer, max_logit_diff, torch_dtype

    heldout = read_split(paths.heldout)
    backend = resolve_backend(
        cfg, paths.base
    )  # first: a backend this machine cannot run fails before loading
    tokenizer = load_tokenizer(paths.adapter)
    dtype = torch_dtype(cfg.dtype)
    # Everything runs on one device: Unsloth, once imported, patches the Llama forward for CUDA.
    dev = device()
    base16_as32 = AutoModelForCausalLM.from_pretrained(paths.base, dtype=dtype).float().to(dev).eval()
    reference = base_with_adapter(paths.base, paths.adapter, dtype).to(dev).eval()
    with atomic_dir(paths.out) as tmp:
        save_merged(backend, paths.base, paths.adapter, tmp, dtype, tokenizer)
        # Verify what was written: reload the saved folder, as a user would, and compare in float32.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(dev).eval()
        inputs = encoded_prompts(tokenizer, heldout, cfg.check_prompts).to(dev)
        diff = max_logit_diff(reloaded, reference, inputs)
        adapter_effect = max_logit_diff(base16_as32, reference, inputs)  # shows the check can see the adapter
        if diff > cfg.tolerance:
            raise StageFailed(  # a failed check, not bad input: exit 1
                f"merged model differs from base + adapter by max |logit diff| {diff:.4f} > merge.tolerance "
                f"{cfg.tolerance}; the merged folder was not written"
            )
        files = sorted(p.name for p in tmp.iterdir())
    log.info(
        "merged model written to %s (max |logit diff| %.4f, adapter effect %.4f)",
        paths.out,
        diff,
        adapter_effect,
    )
    return {
        "backend": backend,
        "dtype": cfg.dtype,
        "max_logit_diff": round(diff, 5),
        "adapter_effect": round(adapter_effect, 5),
        "tolerance": cfg.tolerance,
        "check_prompts": int(inputs["input_ids"].shape[0]),
        "passed": True,
        "files": files,
    }
