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
from genz_speak.io import AppendLog, atomic_open, read_jsonl_tolerant, write_json, write_jsonl
from genz_speak.judges import CRITERIA
from genz_speak.judges import text as T
from genz_speak.judges.offline import Item
from genz_speak.reports.stats import paired_difference, spearman, summarize

log = logging.getLogger(__name__)

# The original project's comparison, plus the base model's own answers.
GROUPS = {
    "base": "Base (raw instruction)",
    "base_model": "Base model answers",
    "gen": "Gen (fine-tuned answers)",
    "train": "Train (teacher outputs)",
}
ANSWER_GROUPS = ("base_model", "gen", "train")  # groups of real answers (surface statistics apply)
PAIRED = ("gen", "base_model")  # the fine-tuning effect: the same questions answered by both models


def _questions(
    cfg: EvaluateConfig, heldout: list[dict[str, Any]], validation: list[dict[str, Any]]
) -> list[dict]:
    return [{**q, "set": "heldout"} for q in heldout] + [
        {**q, "set": "validation"} for q in validation[: cfg.max_validation]
    ]


def answer(
    cfg: EvaluateConfig, model_dir: Path, questions: list[dict[str, Any]], cache_path: Path
) -> list[str]:
    """Greedy answers from the model in `model_dir`.

    Questions go in fixed batches (sorted by length, so each pads little) and every finished batch is
    appended to `cache_path`: a killed run resumes at the first unfinished batch, and since a batch is
    the same batch either way, resumed answers equal uninterrupted ones.
    """
    from genz_speak.generation import ChatGenerator
    from genz_speak.models import inference_dtype, model_fingerprint

    settings = json.dumps([model_fingerprint(model_dir), cfg.max_new_tokens, cfg.repetition_penalty])

    def key(q: dict[str, Any]) -> str:
        return hashlib.sha256(f"{settings}\x1f{q['id']}\x1f{user_message(q)}".encode()).hexdigest()

    cached = {r["key"]: r["text"] for r in read_jsonl_tolerant(cache_path)}
    order = sorted(range(len(questions)), key=lambda i: len(user_message(questions[i])))
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    todo = [b for b in batches if not all(key(questions[i]) in cached for i in b)]
    log.info("answers from %s: %d of %d batches cached", model_dir, len(batches) - len(todo), len(batches))
    if todo:
        gen = ChatGenerator(model_dir, dtype=inference_dtype(model_dir))
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
    return [cached[key(q)] for q in questions]


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
                    "instruction": q["instruction"],
                    "context": q["context"],
                    "reference": q["response"],
                    "text": text,
                }
            )
    return records


def judge_summary(cfg: EvaluateConfig, records: list[dict[str, Any]], judge: str) -> dict[str, Any]:
    """Per group and criterion: mean, std, n and 95% interval; and the paired Gen - Base model
    difference per criterion over the questions both answered."""

    def scores(group: str, c: str) -> dict[str, float | None]:
        return {r["id"]: (r.get(judge) or {}).get(c) for r in records if r["group"] == group}

    groups = {
        group: {
            c: summarize(list(scores(group, c).values()), cfg.bootstrap_samples, cfg.seed) for c in CRITERIA
        }
        for group in GROUPS
    }
    paired = {}
    for c in CRITERIA:
        gen, base = scores(PAIRED[0], c), scores(PAIRED[1], c)
        ids = sorted(gen.keys() & base.keys())
        paired[c] = paired_difference(
            [gen[i] for i in ids], [base[i] for i in ids], cfg.bootstrap_samples, cfg.seed
        )
    return {"groups": groups, "paired": paired}


def surface(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a template-learning model gives away without any judge: the share of distinct opening
    trigrams, the share of answers with emoji, and the mean length, per group of answers."""
    out = {}
    for group in ANSWER_GROUPS:
        texts = [r["text"] for r in records if r["group"] == group]
        if not texts:
            continue
        out[group] = {
            "n": len(texts),
            "distinct_openings": len({T.opening(t) for t in texts}),
            "distinct_opening_share": round(len({T.opening(t) for t in texts}) / len(texts), 4),
            "emoji_share": round(sum(T.has_emoji(t) for t in texts) / len(texts), 4),
            "mean_words": round(sum(len(T.words(t)) for t in texts) / len(texts), 1),
        }
    return out


def plot_data(metrics: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The evaluation as flat rows for DVC's vega plots (.dvc/plots/*.json templates), so `dvc plots diff`
    overlays runs: per judge/group/criterion means with intervals, paired differences, and every score."""
    means, paired = [], []
    for judge in metrics["judges"]:
        for group, by_criterion in metrics[judge]["groups"].items():
            for c, s in by_criterion.items():
                if s["mean"] is not None:
                    means.append({"judge": judge, "group": group, "criterion": c, **s})
        for c, d in metrics[judge]["paired"].items():
            if d["mean"] is not None:
                paired.append({"judge": judge, "criterion": c, "difference": d["mean"], **d})
    scores = [
        {"measure": f"{judge} {c}", "group": r["group"], "id": r["id"], "score": round(r[judge][c], 4)}
        for r in records
        for judge in metrics["judges"]
        for c in CRITERIA
        if (r.get(judge) or {}).get(c) is not None
    ]
    return {"means": means, "paired": paired, "scores": scores}


def report(metrics: dict[str, Any]) -> str:
    """metrics/report.md: per judge the group table and the paired difference, then surface statistics."""
    lines = [f"# genz-speak evaluation\n\n{metrics['questions']} questions (held-out + validation).\n"]
    for judge in metrics["judges"]:
        m = metrics[judge]
        title = "Offline judge" if judge == "offline" else f"LLM judge ({m['usage']['model']})"
        lines += [
            f"## {title}\n",
            "| group | " + " | ".join(CRITERIA) + " |",
            "|---|" + "---|" * len(CRITERIA),
        ]
        for group, label in GROUPS.items():
            cells = []
            for c in CRITERIA:
                s = m["groups"][group][c]
                cells.append(
                    "–"
                    if s["mean"] is None
                    else f"{s['mean']:.2f} ± {s['std']:.2f} "
                    f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}] (n={s['n']})"
                )
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Gen − Base model, paired over the same questions (95% bootstrap interval):\n",
            "| criterion | difference | interval | n |",
            "|---|---|---|---|",
        ]
        for c, d in m["paired"].items():
            if d["mean"] is None:
                lines.append(f"| {c} | – | – | 0 |")
            else:
                lines.append(
                    f"| {c} | {d['mean']:+.3f} | [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['n']} |"
                )
        if judge == "offline":
            acc = m["style_model"]["heldout_accuracy"]
            lines.append(
                "\nStyle model held-out accuracy on the corpus: "
                + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
                + f" ({m['style_model']['test_texts']} texts)."
            )
        else:
            u = m["usage"]
            lines.append(
                f"\n{u['judgements']} judgements, {u['failed']} failed, {u['cached']} cached; "
                f"{u['requests']} requests, about ${u['cost_usd']:.4f}."
            )
        lines.append("")
    if "agreement_spearman" in metrics:
        lines += [
            "## Offline vs LLM judge (Spearman over every judged text)\n",
            *(f"- {c}: {v}" for c, v in metrics["agreement_spearman"].items()),
            "",
        ]
    lines += [
        "## Surface statistics\n",
        "| group | distinct opening trigrams | answers with emoji | mean words |",
        "|---|---|---|---|",
    ]
    for group, s in metrics["surface"].items():
        lines.append(
            f"| {GROUPS[group]} | {s['distinct_openings']}/{s['n']} | {s['emoji_share']:.0%} "
            f"| {s['mean_words']} |"
        )
    return "\n".join(lines) + "\n"


def evaluate(
    cfg: EvaluateConfig,
    base_dir: Path,
    merged_dir: Path,
    heldout: list[dict[str, Any]],
    validation: list[dict[str, Any]],
    dataset: list[dict[str, Any]],
    corpus: list[dict[str, Any]],
    out_dir: Path,
    plots_dir: Path,
    judge_cache: Path,
    offline_cache: Path,
    answer_cache: Path,
) -> tuple[dict[str, Any], str]:
    """Write answers and per-answer scores under `out_dir` and the plot data under `plots_dir`; return
    metrics and a markdown report."""
    questions = _questions(cfg, heldout, validation)
    base_answers = answer(cfg, base_dir, questions, answer_cache)
    gen_answers = answer(cfg, merged_dir, questions, answer_cache)
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
    items = [Item(r["instruction"], r["context"], r["text"], r["reference"]) for r in records]
    metrics: dict[str, Any] = {"questions": len(questions), "judges": []}
    if cfg.judge in ("offline", "both"):
        from genz_speak.judges.offline import OfflineJudge

        judge = OfflineJudge(
            cfg.offline, corpus, offline_cache, exclude=frozenset(q["id"] for q in questions)
        )
        for rec, s in zip(records, judge.score(items), strict=True):
            rec["offline"] = s
        metrics["judges"].append("offline")
        style = judge.style
        metrics["offline"] = {
            **judge_summary(cfg, records, "offline"),
            "style_model": {
                "heldout_accuracy": {k: round(v, 4) for k, v in style.heldout_accuracy.items()},
                "train_texts": style.train_texts,
                "test_texts": style.test_texts,
            },
        }
    if cfg.judge in ("openai", "both"):
        usage = _llm_judge(cfg, records, judge_cache)
        metrics["judges"].append("llm")
        metrics["llm"] = {**judge_summary(cfg, records, "llm"), "usage": usage}
    if cfg.judge == "both":
        metrics["agreement_spearman"] = {
            c: spearman(
                [(r.get("offline") or {}).get(c) for r in records],
                [(r.get("llm") or {}).get(c) for r in records],
            )
            for c in CRITERIA
        }
    metrics["surface"] = surface(records)
    for name, rows in plot_data(metrics, records).items():
        write_json(plots_dir / f"{name}.json", rows)
    write_jsonl(
        out_dir / "scores.jsonl",
        [{k: v for k, v in r.items() if k not in ("instruction", "context")} for r in records],
    )
    return metrics, report(metrics)


def _llm_judge(cfg: EvaluateConfig, records: list[dict[str, Any]], cache: Path) -> dict[str, Any]:
    from genz_speak.judges.llm import LLMJudge

    judge = LLMJudge(cfg.llm, cache)
    verdicts = judge.judge([(r["question"], r["text"], r["reference"]) for r in records])
    judge.close()
    for rec, v in zip(records, verdicts, strict=True):
        rec["llm"] = {**(v.scores or dict.fromkeys(CRITERIA)), "rationale": v.rationale}
        if v.error:
            rec["llm"]["error"] = v.error
    failed = sum(v.scores is None for v in verdicts)
    check_judgements(cfg, failed, len(verdicts), [v.error for v in verdicts if v.error])
    if failed:
        log.warning("%d of %d judgements failed; see llm.error in scores.jsonl", failed, len(verdicts))
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
