"""Training backends: how the base model is loaded and wrapped with LoRA. The trainer is shared (sft.py).

- `transformers`: transformers + peft, 4-bit through bitsandbytes when `load_in_4bit` (QLoRA).
- `unsloth`: Unsloth's FastLanguageModel (CUDA only), 4-bit QLoRA with its fused kernels and checkpointing.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from genz_speak import chat_templates
from genz_speak.config import TrainConfig
from genz_speak.errors import ParamError
from genz_speak.training import attention, cpu, distributed

log = logging.getLogger(__name__)

Backend = Literal["unsloth", "transformers"]


def resolve_backend(cfg: TrainConfig) -> Backend:
    import torch

    cuda = torch.cuda.is_available()
    if cfg.backend == "unsloth" and not cuda:
        raise ParamError("train.backend", "unsloth needs a CUDA GPU; use auto or transformers here")
    if cfg.backend == "auto":
        return "unsloth" if cuda and importlib.util.find_spec("unsloth") is not None else "transformers"
    return cfg.backend


def check_target_modules(cfg: TrainConfig, base_dir: Path) -> None:
    """train.lora.target_modules must each name modules of the base model (peft matches a module whose
    name is the entry or ends in "." + the entry): checked on the model's structure alone, built on the
    meta device without weights, before anything is loaded or written."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in cfg.lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ParamError(
            "train.lora.target_modules",
            f"{missing} name no module of {base_dir}; its linear layers are {linear}",
        )


@dataclass
class Prepared:
    model: Any
    tokenizer: Any
    peft_config: Any  # None when the backend already wrapped the model
    precision: cpu.Precision  # CUDA always trains under bf16 autocast; the CPU as train.cpu_precision says


def lora_kwargs(cfg: TrainConfig, num_layers: int) -> dict[str, Any]:
    top = cfg.lora.top_layers
    if top is not None and top > num_layers:
        raise ParamError("train.lora.top_layers", f"{top} > the model's {num_layers} layers")
    return {
        # Adapting only the top layers also stops backpropagation there: the CPU demo's main saving.
        "layers_to_transform": list(range(num_layers - top, num_layers)) if top else None,
        "r": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout,
        "target_modules": list(cfg.lora.target_modules),
        "bias": "none",
    }


def load_transformers(base: Path, cfg: TrainConfig) -> Prepared:
    import torch
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from genz_speak.models import load_tokenizer

    cuda = torch.cuda.is_available()
    precision = "bf16" if cuda else cpu.resolve_precision(cfg.cpu_precision)
    # bf16 on the CPU: the frozen base stored in bf16 (autocast would cast every fp32 weight again in each
    # forward, since it caches casts only of weights that train), the LoRA weights in fp32 (peft upcasts
    # adapters by default), so small updates are not rounded away.
    compute = torch.bfloat16 if precision == "bf16" else torch.float32
    kwargs: dict[str, Any] = {"dtype": compute}
    attn = cfg.attn_implementation or (attention.VARLEN if cfg.padding_free_batches else None)
    if attn == attention.VARLEN:
        attention.register()
    if attn:
        kwargs["attn_implementation"] = attn
    if cuda and distributed.world_size() > 1:
        # Each data-parallel process holds a whole copy on its own GPU (a 4-bit model cannot be moved later).
        kwargs["device_map"] = {"": distributed.local_rank()}
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    tok = load_tokenizer(base)
    lora = lora_kwargs(cfg, model.config.num_hidden_layers) | new_token_rows(base, model)
    return Prepared(model, tok, LoraConfig(task_type="CAUSAL_LM", **lora), precision)


def new_token_rows(base: Path, model: Any) -> dict[str, Any]:
    """peft's `trainable_token_indices` for the token rows prepare added (prepare.chat_template: chatml):
    their embeddings start untrained, so training updates them (and only them) beside the LoRA weights;
    an untied lm_head has its own rows to train. Nothing for any other template."""
    ids = chat_templates.new_token_ids(base)
    if not ids:
        return {}
    tied = model.get_output_embeddings() is None or getattr(model.config, "tie_word_embeddings", False)
    return {"trainable_token_indices": {"embed_tokens": ids} | ({} if tied else {"lm_head": ids})}


def load_unsloth(base: Path, cfg: TrainConfig) -> Prepared:
    if chat_templates.new_token_ids(base):
        raise ParamError(
            "prepare.chat_template",
            "chatml adds token rows that train.backend: unsloth does not train here; use train.backend: "
            "transformers, or prepare.chat_template: plain",
        )
    # Unsloth patches transformers/trl at import: it must come before them (sft.py imports trl later).
    from genz_speak.models import ensure_pad_token, keep_legacy

    # Under a data-parallel launch its loader places each process's copy on that process's GPU (LOCAL_RANK).
    attention.allow_unsloth_torch_varlen()  # before the import, which decides its packed-row kernel
    from unsloth import FastLanguageModel

    kernel = attention.unsloth_packed_kernel()
    slow = cfg.padding_free_batches and attention.SDPA_SEGMENTS in kernel
    (log.warning if slow else log.info)("unsloth: padding-free batches run %s", kernel)

    model, tok = FastLanguageModel.from_pretrained(
        model_name=str(base), max_seq_length=cfg.max_seq_length, load_in_4bit=cfg.load_in_4bit, dtype=None
    )
    model = FastLanguageModel.get_peft_model(
        model,
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        random_state=cfg.seed,
        **lora_kwargs(cfg, model.config.num_hidden_layers),
    )
    return Prepared(model, keep_legacy(ensure_pad_token(tok)), None, "bf16")


def load(backend: Backend, base: Path, cfg: TrainConfig) -> Prepared:
    log.info("train backend: %s (4-bit: %s)", backend, cfg.load_in_4bit)
    return load_unsloth(base, cfg) if backend == "unsloth" else load_transformers(base, cfg)
