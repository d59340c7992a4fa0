"""Merge a LoRA adapter onto the base reloaded in 16-bit (never onto 4-bit weights) and verify the result."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

from genz_speak.config import MergeConfig
from genz_speak.data.chat import user_message
from genz_speak.errors import InputError, StageFailed
from genz_speak.io import replace_dir

log = logging.getLogger(__name__)


def check_prompts(tokenizer: Any, rows: list[dict[str, Any]], n: int) -> list[str]:
    """The chat prompts of the first `n` rows, as the model sees them (merge and export check on these)."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(r)}], tokenize=False, add_generation_prompt=True
        )
        for r in rows[:n]
    ]


def check_inputs(tokenizer: Any, rows: list[dict[str, Any]], n: int) -> Any:
    return tokenizer(
        check_prompts(tokenizer, rows, n), return_tensors="pt", padding=True, add_special_tokens=False
    )


def max_logit_diff(a: Any, b: Any, inputs: Any) -> float:
    """Max |logit difference| over the real (non-padding) positions of `inputs`, computed in float32."""
    import torch

    with torch.inference_mode():
        la = a(**inputs).logits.float()
        lb = b(**inputs).logits.float()
    mask = inputs["attention_mask"].bool()
    return float((la - lb).abs()[mask].max())


def _resolve(cfg: MergeConfig, base_dir: Path) -> str:
    import torch

    from genz_speak.models import stored_dtype

    # Unsloth's merged_16bit save writes each merged tensor in the base's stored dtype whatever dtype
    # it is asked for, so it can honour merge.dtype only when the base is stored in that dtype.
    base_dtype = stored_dtype(base_dir)
    if cfg.backend == "unsloth":
        if not torch.cuda.is_available():
            raise InputError("params.yaml: merge.backend: unsloth needs a CUDA GPU; use auto or peft here")
        if base_dtype != cfg.dtype:
            raise InputError(
                f"params.yaml: merge.backend: unsloth writes the base's stored dtype ({base_dtype}), not "
                f"merge.dtype: {cfg.dtype}; set prepare.base_dtype: {cfg.dtype} or merge.backend: peft"
            )
    if cfg.backend == "auto":
        if not (torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None):
            return "peft"
        if base_dtype != cfg.dtype:
            log.info("merge.backend auto -> peft: the base is stored in %s, not %s", base_dtype, cfg.dtype)
            return "peft"
        return "unsloth"
    return cfg.backend


def _save_unsloth(adapter_dir: Path, out: Path, cfg: MergeConfig) -> None:
    """Unsloth's merged 16-bit save: it reloads the base in 16-bit itself, never merging into 4-bit."""
    from unsloth import FastLanguageModel

    from genz_speak.models import torch_dtype

    model, tokenizer = FastLanguageModel.from_pretrained(
        str(adapter_dir), load_in_4bit=False, dtype=torch_dtype(cfg.dtype)
    )
    model.save_pretrained_merged(str(out), tokenizer, save_method="merged_16bit")


def merge(
    cfg: MergeConfig, base_dir: Path, adapter_dir: Path, out_dir: Path, check_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Write base + adapter as one model folder; fail when it disagrees with base + adapter too much."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from genz_speak.models import device, load_tokenizer, torch_dtype

    backend = _resolve(cfg, base_dir)  # first: a merge.backend this machine cannot run fails before loading
    tokenizer = load_tokenizer(adapter_dir)
    dtype = torch_dtype(cfg.dtype)
    # The reference: the 16-bit base + the unmerged adapter, computed in float32. Against it, the check
    # measures what merging and rounding the merged weights to 16 bits costs, not the base's own rounding.
    # Everything runs on one device: Unsloth, once imported, patches the Llama forward for CUDA.
    dev = device()
    base16_as32 = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).float().to(dev).eval()
    reference = (
        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).float(), adapter_dir
        )
        .to(dev)
        .eval()
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if backend == "unsloth":
        _save_unsloth(adapter_dir, tmp, cfg)
    else:
        merged = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype), adapter_dir
        ).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        merged.generation_config.save_pretrained(tmp)
        del merged

    # Verify what was written: reload the saved folder, as a user would, and compare in float32.
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(dev).eval()
    inputs = check_inputs(tokenizer, check_rows, cfg.check_prompts).to(dev)
    diff = max_logit_diff(reloaded, reference, inputs)
    adapter_effect = max_logit_diff(base16_as32, reference, inputs)  # shows the check can see the adapter
    metrics = {
        "backend": backend,
        "dtype": cfg.dtype,
        "max_logit_diff": round(diff, 5),
        "adapter_effect": round(adapter_effect, 5),
        "tolerance": cfg.tolerance,
        "check_prompts": int(inputs["input_ids"].shape[0]),
        "passed": diff <= cfg.tolerance,
        "files": sorted(p.name for p in tmp.iterdir()),
    }
    if diff > cfg.tolerance:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageFailed(  # a failed check, not bad input: exit 1
            f"merged model differs from base + adapter by max |logit diff| {diff:.4f} > merge.tolerance "
            f"{cfg.tolerance}; the merged folder was not written"
        )
    replace_dir(tmp, out_dir)
    log.info(
        "merged model written to %s (max |logit diff| %.4f, adapter effect %.4f)",
        out_dir,
        diff,
        adapter_effect,
    )
    return metrics
