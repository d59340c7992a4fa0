"""export: the merged model as GGUF files (llama.cpp's own converter; each file checked against the merged
model in llama.cpp), an Ollama Modelfile and the model card; written to a temporary folder and put in
place only when every check passes (a failed check leaves the previous export as it was)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genz_speak.config import ExportConfig, GgufFormat
from genz_speak.data.chat import chat_prompts, encoded_prompts
from genz_speak.data.dataset import read_split
from genz_speak.errors import MissingInput, StageFailed
from genz_speak.export import card, converter, ollama, verify
from genz_speak.io import atomic_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    merged: Path  # merge's model folder
    heldout: Path  # the held-out questions: the first export.check_prompts are compared on
    out: Path  # GGUF files, Modelfile, README.md (the model card)
    run_metrics: list[Path]  # metrics/<stage>.json of the stages before: the model card reports them
    params: Path  # the params file: the model card reports the other sections too


def gguf_name(name: str, fmt: GgufFormat) -> str:
    return f"{name}-{fmt}.gguf"


def _format(cfg: ExportConfig, fmt: GgufFormat, path: Path, check: dict[str, Any]) -> dict[str, Any]:
    tolerance = getattr(cfg.tolerance, fmt)
    diff, problems = check.get("max_logit_diff"), check["tokenizer_problems"]
    log.info(
        "%s (%s check): max |logit diff| %s (tolerance %g), top-1 agreement %s, tokenizer problems: %s",
        path.name, check["check"], diff, tolerance, check.get("top1_agreement"), problems or "none",
    )  # fmt: skip
    result = {"file": path.name, "bytes": path.stat().st_size, **check, "tolerance": tolerance}
    for key in ("max_logit_diff", "top1_agreement", "next_token_agreement"):
        if key in result:
            result[key] = round(result[key], 5 if key == "max_logit_diff" else 4)
    result["passed"] = (diff is None or diff <= tolerance) and not problems
    return result


def _write_ggufs(
    cfg: ExportConfig, merged_dir: Path, tmp: Path, heldout: list[dict[str, Any]]
) -> dict[str, Any]:
    """The GGUF files (llama.cpp's converter) and the Modelfile, written to `tmp` and checked; their
    metrics. Raises StageFailed listing every failed check."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from genz_speak.models import load_tokenizer

    tokenizer = load_tokenizer(merged_dir)
    chat = ollama.decompose(tokenizer)
    probes = ollama.check_roundtrip(tokenizer, chat)
    reference = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    prompts = chat_prompts(tokenizer, heldout, cfg.check_prompts)
    inputs = encoded_prompts(tokenizer, heldout, cfg.check_prompts)
    reference_logits = verify.logits(reference, inputs)
    files = {fmt: tmp / gguf_name(cfg.name, fmt) for fmt in cfg.formats}
    with tempfile.TemporaryDirectory() as work:
        template = converter.gguf_chat_template(tokenizer.chat_template)
        staged = converter.stage(merged_dir, Path(work) / "staged", tokenizer, template, cfg.license)
        converted = converter.convert(staged, files, name=cfg.name, tokenizer_pre=cfg.tokenizer_pre)
    formats: dict[str, dict[str, Any]] = {}
    failures = []
    for fmt, path in files.items():
        if verify.has_llama_cpp():
            check = verify.check_llama_cpp(path, tokenizer, chat, prompts, inputs, reference_logits)
        else:
            check = verify.check_transformers(path, tokenizer, reference.config, inputs, reference_logits)
        formats[fmt] = result = _format(cfg, fmt, path, check)
        if result.get("max_logit_diff", 0.0) > result["tolerance"]:
            failures.append(
                f"{path.name}: max |logit diff| {result['max_logit_diff']:.4f} > export.tolerance.{fmt} "
                f"{result['tolerance']}"
            )
        failures += [f"{path.name}: {p}" for p in result["tokenizer_problems"]]
    if failures:
        raise StageFailed("export checks failed, nothing written:\n  " + "\n  ".join(failures))

    eos = reference.generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
    stops = ollama.stop_tokens(tokenizer, chat, eos_ids)
    source = gguf_name(cfg.name, cfg.modelfile_from)
    (tmp / "Modelfile").write_text(ollama.modelfile(source, chat, stops, cfg.num_ctx), encoding="utf-8")
    return {
        "formats": formats,
        "converter": {
            **converted.converter,
            "tokenizer_pre": converted.tokenizer_pre,
            "tokenizer_pre_from": converted.pre_source,
        },
        "check_prompts": int(inputs["input_ids"].shape[0]),
        "chat_template_probes": probes,
        "modelfile": {
            "from": source,
            "stops": stops,
            "num_ctx": cfg.num_ctx,
            "default_system": chat.default_system,
        },
    }


def run(cfg: ExportConfig, paths: Paths) -> dict[str, Any]:
    """Write the GGUF files, Modelfile and model card of the merged model; fail, writing nothing, when a
    GGUF's logits or tokenizer disagree with the merged model beyond export.tolerance. With no
    export.formats, only the card."""
    from genz_speak.params import load_params

    missing = [str(f) for f in paths.run_metrics if not f.is_file()]
    if missing:
        raise MissingInput(f"{', '.join(missing)}: not found (run the stages before export)")
    run_metrics = {f.stem: json.loads(f.read_text()) for f in paths.run_metrics}
    params = load_params(paths.params)
    heldout = read_split(paths.heldout)
    with atomic_dir(paths.out) as tmp:
        metrics = _write_ggufs(cfg, paths.merged, tmp, heldout) if cfg.formats else {"formats": {}}
        card.model_card(params, cfg.name, run_metrics, metrics["formats"]).save(tmp / "README.md")
        metrics["files"] = sorted(p.name for p in tmp.iterdir())
    metrics["merged_bytes"] = sum(f.stat().st_size for f in paths.merged.glob("*.safetensors"))
    metrics["passed"] = True
    log.info("export written to %s: %s", paths.out, ", ".join(metrics["files"]))
    return metrics
