"""The evaluate stage's engine: answers from the base and merged models, judged, summarised, reported."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from genz_speak.config import EvaluateConfig
from genz_speak.data.chat import user_message
from genz_speak.errors import StageFailed
from genz_speak.generation import ChatGenerator
from genz_speak.io import AppendLog, atomic_open, read_jsonl_tolerant, write_jsonl
from genz_speak.judges.offline import CRITERIA, OfflineJudge
from genz_speak.reports.stats import spearman, summarize

log = logging.getLogger(__name__)

# The original project's comparison, plus the base model's own answers.
GROUPS = {
    "base": "Base (raw instruction)",
    "base_model": "Base model answers",
    "gen": "Gen (fine-tuned answers)",
    "train": "Train (teacher outputs)",
}
# Which LLM criterion each offline criterion is held to.
AGREEMENT = {"style": "genz_style", "content": "helpfulness", "fluency": "coherence"}


def _questions(
    cfg: EvaluateConfig, heldout: list[dict[str, Any]], validation: list[dict[str, Any]]
) -> list[dict]:
    return [{**q, "set": "heldout"} for q in heldout] + [
        {**q, "set": "validation"} for q in validation[: cfg.max_validation]
    ]


def answer(
    cfg: EvaluateConfig, model_dir: Path, questions: list[dict[str, Any]], cache_path: Path
) -> tuple[ChatGenerator, list[str]]:
    """Greedy answers from the model in `model_dir` (kept loaded: the base model also scores fluency).

    Questions go in fixed batches (sorted by length, so each pads little) and every finished batch is
    appended to `cache_path`: a killed run resumes at the first unfinished batch, and since a batch is
    the same batch either way, resumed answers equal uninterrupted ones.
    """
    from genz_speak.models import inference_dtype, model_fingerprint

    gen = ChatGenerator(model_dir, dtype=inference_dtype(model_dir))
    settings = json.dumps([model_fingerprint(model_dir), cfg.max_new_tokens, cfg.repetition_penalty])

    def key(q: dict[str, Any]) -> str:
        return hashlib.sha256(f"{settings}\x1f{q['id']}\x1f{user_message(q)}".encode()).hexdigest()

    cached = {r["key"]: r["text"] for r in read_jsonl_tolerant(cache_path)}
    order = sorted(range(len(questions)), key=lambda i: len(user_message(questions[i])))
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    todo = [b for b in batches if not all(key(questions[i]) in cached for i in b)]
    log.info("answers from %s: %d of %d batches cached", model_dir, len(batches) - len(todo), len(batches))
    with AppendLog(cache_path) as log_file:
        for batch in todo:
            outs = gen.generate(
                [[{"role": "user", "content": user_message(questions[i])}] for i in batch],
                max_new_tokens=cfg.max_new_tokens,
                repetition_penalty=cfg.repetition_penalty,
                batch_size=len(batch),
            )
            for i, out in zip(batch, outs, strict=True):
                cached[key(questions[i])] = out.text
                log_file.write({"key": key(questions[i]), "id": questions[i]["id"], "text": out.text})
    return gen, [cached[key(q)] for q in questions]


def build_records(
    questions: list[dict[str, Any]],
    base_answers: list[str],
    gen_answers: list[str],
    teacher: dict[str, str],
) -> list[dict[str, Any]]:
    records = []
    for q, base_a, gen_a in zip(questions, base_answers, gen_answers, strict=True):
        texts = {"base": q["instruction"], "base_model": base_a, "gen": gen_a, "train": teacher.get(q["id"])}
        for group, text in texts.items():
            if text is None:  # the teacher's rewrite of this question was rejected
                continue
            records.append(
                {
                    "id": q["id"],
                    "set": q["set"],
                    "category": q["category"],
                    "group": group,
                    "question": user_message(q),
                    "reference": q["response"],
                    "text": text,
                }
            )
    return records


def summarize_groups(
    cfg: EvaluateConfig, records: list[dict[str, Any]], criteria: list[str]
) -> dict[str, Any]:
    return {
        group: {
            c: summarize([r.get(c) for r in records if r["group"] == group], cfg.bootstrap_samples, cfg.seed)
            for c in criteria
        }
        for group in GROUPS
    }


def report_table(groups: dict[str, Any], criteria: list[str]) -> str:
    head = "| group | " + " | ".join(criteria) + " |\n|---|" + "---|" * len(criteria) + "\n"
    rows = []
    for group, label in GROUPS.items():
        cells = []
        for c in criteria:
            s = groups[group][c]
            cells.append(
                "–"
                if s["mean"] is None
                else f"{s['mean']:.2f} ± {s['std']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}] (n={s['n']})"
            )
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def evaluate(
    cfg: EvaluateConfig,
    base_dir: Path,
    merged_dir: Path,
    heldout: list[dict[str, Any]],
    validation: list[dict[str, Any]],
    dataset: list[dict[str, Any]],
    out_dir: Path,
    judge_cache: Path,
    answer_cache: Path,
) -> tuple[dict[str, Any], str]:
    """Write answers and per-answer scores under `out_dir`; return metrics and a markdown report."""
    questions = _questions(cfg, heldout, validation)
    base_model, base_answers = answer(cfg, base_dir, questions, answer_cache)
    _, gen_answers = answer(cfg, merged_dir, questions, answer_cache)
    records = build_records(questions, base_answers, gen_answers, {r["id"]: r["output"] for r in dataset})
    write_jsonl(
        out_dir / "answers.jsonl",
        [
            {
                "id": q["id"],
                "set": q["set"],
                "question": user_message(q),
                "reference": q["response"],
                "base_model": b,
                "gen": g,
            }
            for q, b, g in zip(questions, base_answers, gen_answers, strict=True)
        ],
    )

    metrics: dict[str, Any] = {"questions": len(questions), "judge": cfg.judge}
    criteria: list[str] = []
    if cfg.judge in ("offline", "both"):
        judge = OfflineJudge(cfg.offline, dataset, base_model.model, base_model.tokenizer)
        for rec, s in zip(
            records, judge.score([r["text"] for r in records], [r["reference"] for r in records]), strict=True
        ):
            rec.update(s)
        criteria += list(CRITERIA)
        metrics["style_classifier"] = {
            "heldout_accuracy": round(judge.classifier.heldout_accuracy, 4),
            "train_texts": judge.classifier.train_rows,
            "test_texts": judge.classifier.test_rows,
        }
    if cfg.judge in ("openai", "both"):
        metrics["llm_judge"] = _llm_judge(cfg, records, judge_cache)
        criteria += list(AGREEMENT.values())
    metrics["groups"] = summarize_groups(cfg, records, criteria)
    if cfg.judge == "both":
        metrics["agreement_spearman"] = {
            f"{off}_vs_{llm}": spearman([r.get(off) for r in records], [r.get(llm) for r in records])
            for off, llm in AGREEMENT.items()
        }
    write_jsonl(out_dir / "scores.jsonl", records)
    report = "# genz-speak evaluation\n\n" + report_table(metrics["groups"], criteria)
    if "llm_judge" in metrics:
        judged = metrics["llm_judge"]
        report += f"\nLLM judge: {judged['failed']} of {judged['judgements']} judgements failed\n"
    if "style_classifier" in metrics:
        report += (
            f"\nStyle classifier held-out accuracy: {metrics['style_classifier']['heldout_accuracy']:.3f}\n"
        )
    return metrics, report


def _llm_judge(cfg: EvaluateConfig, records: list[dict[str, Any]], cache: Path) -> dict[str, Any]:
    from genz_speak.judges.llm import LLM_CRITERIA, LLMJudge

    judge = LLMJudge(cfg.llm, cache)
    verdicts = judge.judge([(r["question"], r["text"], r["reference"]) for r in records])
    judge.close()
    for rec, v in zip(records, verdicts, strict=True):
        for c in LLM_CRITERIA:
            rec[c] = v.scores[c] if v.scores else None
        rec["rationale"] = v.rationale
        if v.error:
            rec["judge_error"] = v.error
    failed = sum(v.scores is None for v in verdicts)
    check_judgements(cfg, failed, len(verdicts), [v.error for v in verdicts if v.error])
    if failed:
        log.warning("%d of %d judgements failed; see judge_error in scores.jsonl", failed, len(verdicts))
    cost = (
        judge.tokens_in / 1e6 * cfg.llm.price_in_per_mtok
        + judge.tokens_out / 1e6 * cfg.llm.price_out_per_mtok
    )
    return {
        "model": cfg.llm.model,
        "judgements": len(verdicts),
        "failed": failed,
        "cached": sum(v.cached for v in verdicts),
        "requests": judge.requests,
        "faults": dict(judge.faults),
        "tokens_in": judge.tokens_in,
        "tokens_out": judge.tokens_out,
        "cost_usd": round(cost, 4),
    }


def check_judgements(cfg: EvaluateConfig, failed: int, total: int, errors: list[str]) -> None:
    """A judge that produced nothing, or failed more than `evaluate.llm.max_failed_fraction` of its
    judgements, fails the stage (StageFailed): its means would be missing or stand on a biased few."""
    if not failed or (failed < total and failed / total <= cfg.llm.max_failed_fraction):
        return
    limit = cfg.llm.max_failed_fraction
    problem = f"over evaluate.llm.max_failed_fraction={limit}" if failed / total > limit else "all of them"
    common = Counter(e.split(" - ", 1)[0][:120] for e in errors).most_common(3)
    raise StageFailed(
        f"evaluate: {failed} of {total} LLM judgements failed ({problem}); the verdicts so far are cached; "
        "errors: " + "; ".join(f"{n} x {e}" for e, n in common)
    )


def write_report(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)
