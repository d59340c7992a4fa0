"""The export stage's engine: GGUF files, each reloaded and checked against the merged model, an Ollama
Modelfile, and the model card; written to a temporary folder and moved into place only when every check
passes (like merge: a failed check leaves the previous export as it was)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genz_speak.config import ExportConfig, GgufFormat, Params
from genz_speak.errors import StageFailed
from genz_speak.export import card, ollama
from genz_speak.export.gguf_file import write_gguf
from genz_speak.models import load_gguf_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")
# Beside the check prompts: digits, accents, emoji, tabs and runs of spaces, where pre-tokenizers differ.
TOKENIZER_PROBE = "Digits 1234567 and ünïcödé, emoji 🔥, tabs\tand  double  spaces.\n\nNew paragraph."


def gguf_name(name: str, fmt: GgufFormat) -> str:
    return f"{name}-{fmt}.gguf"


def _tokenizer_agreement(
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


def _logits(model: Any, inputs: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(**inputs).logits.float()


def _check_gguf(
    path: Path, reference_logits: Any, tokenizer: PreTrainedTokenizerBase, inputs: Any, texts: list[str]
) -> dict[str, Any]:
    """Reload a GGUF file through transformers, as a user would, and compare it with the merged model:
    max |logit diff| and how often the most likely next token agrees, over the prompts' real positions;
    how its tokenizer disagrees with the merged model's."""
    import torch
    from transformers import AutoModelForCausalLM

    other_tok = load_gguf_tokenizer(path)  # as llama.cpp reads it (transformers 5.17 takes the wrong EOS)
    problems = _tokenizer_agreement(tokenizer, other_tok, texts)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    logits = _logits(model, inputs)
    mask = inputs["attention_mask"].bool()
    return {
        "max_logit_diff": float((logits - reference_logits).abs()[mask].max()),
        "top1_agreement": float((logits.argmax(-1) == reference_logits.argmax(-1))[mask].float().mean()),
        "tokenizer_problems": problems,
    }


def _write_ggufs(
    cfg: ExportConfig, merged_dir: Path, tmp: Path, check_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The GGUF files and the Modelfile, written to `tmp` and checked; their metrics. Raises InputError
    listing every failed check."""
    import torch
    from transformers import AutoModelForCausalLM

    from genz_speak.models import load_tokenizer
    from genz_speak.training.merge import check_inputs, check_prompts

    tokenizer = load_tokenizer(merged_dir)
    chat = ollama.decompose(tokenizer)
    probes = ollama.check_roundtrip(tokenizer, chat)
    reference = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    inputs = check_inputs(tokenizer, check_rows, cfg.check_prompts)
    reference_logits = _logits(reference, inputs)
    texts = [*check_prompts(tokenizer, check_rows, cfg.check_prompts), TOKENIZER_PROBE]
    formats: dict[str, dict[str, Any]] = {}
    failures = []
    for fmt in cfg.formats:
        path = tmp / gguf_name(cfg.name, fmt)
        types = write_gguf(
            reference,
            tokenizer,
            merged_dir,
            path,
            fmt,
            name=cfg.name,
            license=cfg.license,
            tokenizer_pre=cfg.tokenizer_pre,
        )
        check = _check_gguf(path, reference_logits, tokenizer, inputs, texts)
        diff, problems = check["max_logit_diff"], check["tokenizer_problems"]
        tolerance = getattr(cfg.tolerance, fmt)
        formats[fmt] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "tensor_types": types,
            "max_logit_diff": round(diff, 5),
            "tolerance": tolerance,
            "top1_agreement": round(check["top1_agreement"], 4),
            "tokenizer_problems": problems,
            "passed": diff <= tolerance and not problems,
        }
        log.info(
            "%s: max |logit diff| %.5f (tolerance %g), top-1 agreement %.4f, tokenizer problems: %s",
            path.name,
            diff,
            tolerance,
            check["top1_agreement"],
            problems or "none",
        )
        if diff > tolerance:
            failures.append(f"{path.name}: max |logit diff| {diff:.4f} > export.tolerance.{fmt} {tolerance}")
        failures += [f"{path.name}: {p}" for p in problems]
    if failures:
        raise StageFailed("export checks failed, nothing written:\n  " + "\n  ".join(failures))

    eos = reference.generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
    stops = ollama.stop_tokens(tokenizer, chat, eos_ids)
    source = gguf_name(cfg.name, cfg.modelfile_from)
    (tmp / "Modelfile").write_text(ollama.modelfile(source, chat, stops, cfg.num_ctx), encoding="utf-8")
    return {
        "formats": formats,
        "check_prompts": int(inputs["input_ids"].shape[0]),
        "chat_template_probes": probes,
        "modelfile": {
            "from": source,
            "stops": stops,
            "num_ctx": cfg.num_ctx,
            "default_system": chat.default_system,
        },
    }


def export(
    params: Params,
    merged_dir: Path,
    out_dir: Path,
    check_rows: list[dict[str, Any]],
    stage_metrics: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Write the GGUF files, Modelfile and model card of `merged_dir` to `out_dir`; fail, writing
    nothing, when a GGUF's logits or tokenizer disagree with the merged model beyond export.tolerance.
    With no export.formats, only the card."""
    cfg = params.export
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        metrics = _write_ggufs(cfg, merged_dir, tmp, check_rows) if cfg.formats else {"formats": {}}
        card.model_card(params, cfg.name, stage_metrics, metrics["formats"]).save(tmp / "README.md")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    metrics["merged_bytes"] = sum(f.stat().st_size for f in merged_dir.glob("*.safetensors"))
    metrics["files"] = sorted(p.name for p in tmp.iterdir())
    metrics["passed"] = True
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    log.info("export written to %s: %s", out_dir, ", ".join(metrics["files"]))
    return metrics
