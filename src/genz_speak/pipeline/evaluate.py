"""evaluate: the base and merged models answer held-out (+ validation) questions; judges score every
answer of four groups (Base, Base model, Gen, Train); the comparison, report and plot data are written."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genz_speak.config import EvaluateConfig
from genz_speak.data.chat import user_message
from genz_speak.data.corpus import read_corpus
from genz_speak.data.dataset import read_dataset, read_split
from genz_speak.errors import StageFailed
from genz_speak.io import atomic_open, write_json, write_jsonl
from genz_speak.judges import CRITERIA
from genz_speak.reports import summary, tables
from genz_speak.reports.stats import spearman

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model folder (prepare)
    merged: Path  # the fine-tuned model folder (merge)
    data_dir: Path  # prepare's splits: heldout.jsonl and validation.jsonl are answered
    dataset: Path  # generate's dataset: the teacher's rewrites are the Train group
    corpus: Path  # the hand-written Gen Z corpus the offline judge's style model is fitted on
    out_dir: Path  # answers.jsonl, scores.jsonl
    plots_dir: Path  # means.json, paired.json, scores.json for `dvc plots`
    judge_cache: Path  # LLM verdicts, reused across runs
    offline_cache: Path  # the offline judge's cut LM and fitted style model
    answer_cache: Path  # answers per finished batch: a killed run resumes
    report: Path  # metrics/report.md


def questions(
    cfg: EvaluateConfig, heldout: list[dict[str, Any]], validation: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The questions both models answer: every held-out one, then the first validation ones."""
    return [{**q, "set": "heldout"} for q in heldout] + [
        {**q, "set": "validation"} for q in validation[: cfg.max_validation]
    ]


def build_records(
    qs: list[dict[str, Any]], base_answers: list[str], gen_answers: list[str], teacher: dict[str, str]
) -> list[dict[str, Any]]:
    """One record per judged text: each question's raw instruction, both models' answers, and the
    teacher's rewrite where it has one."""
    records = []
    for q, base_a, gen_a in zip(qs, base_answers, gen_answers, strict=True):
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


def _offline(
    cfg: EvaluateConfig,
    records: list[dict[str, Any]],
    corpus: list[dict[str, Any]],
    paths: Paths,
    exclude: frozenset[str],
) -> dict[str, Any]:
    from genz_speak.judges.offline import Item, OfflineJudge

    judge = OfflineJudge(cfg.offline, corpus, paths.offline_cache, exclude=exclude)
    items = [Item(r["instruction"], r["context"], r["text"], r["reference"], r["category"]) for r in records]
    for rec, s in zip(records, judge.score(items), strict=True):
        rec["offline"] = s
    style = judge.style
    return {
        **summary.judge_summary(records, "offline", CRITERIA, cfg.bootstrap_samples, cfg.seed),
        "style_model": {
            "heldout_accuracy": {k: round(v, 4) for k, v in style.heldout_accuracy.items()},
            "train_texts": style.train_texts,
            "test_texts": style.test_texts,
        },
    }


def _llm(cfg: EvaluateConfig, records: list[dict[str, Any]], cache: Path) -> dict[str, Any]:
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
    usage = judge.usage()
    usage |= {"judgements": len(verdicts), "failed": failed, "cached": sum(v.cached for v in verdicts)}
    return {
        **summary.judge_summary(records, "llm", CRITERIA, cfg.bootstrap_samples, cfg.seed),
        "usage": usage,
    }


def run(cfg: EvaluateConfig, paths: Paths) -> dict[str, Any]:
    """Answer, judge and summarise; write answers, per-answer scores, plot data and the report."""
    from genz_speak.generation import answer_questions

    qs = questions(
        cfg, read_split(paths.data_dir / "heldout.jsonl"), read_split(paths.data_dir / "validation.jsonl")
    )
    dataset = read_dataset(paths.dataset)
    corpus = read_corpus(paths.corpus)
    decoding = {"decoding": cfg.decoding, "batch_size": cfg.batch_size}
    base = answer_questions(paths.base, qs, paths.answer_cache, **decoding)
    gen = answer_questions(paths.merged, qs, paths.answer_cache, **decoding)
    base_answers, gen_answers = [a.text for a in base], [a.text for a in gen]
    records = build_records(qs, base_answers, gen_answers, {r["id"]: r["output"] for r in dataset})
    write_jsonl(
        paths.out_dir / "answers.jsonl",
        [
            {
                "id": q["id"],
                "set": q["set"],
                "question": user_message(q),
                "reference": q["response"],
                "base_model": b.text,
                "gen": g.text,
                "base_model_ended": b.ended,
                "gen_ended": g.ended,
            }
            for q, b, g in zip(qs, base, gen, strict=True)
        ],
    )
    metrics: dict[str, Any] = {"questions": len(qs), "judges": []}
    if cfg.judge in ("offline", "both"):
        metrics["judges"].append("offline")
        metrics["offline"] = _offline(cfg, records, corpus, paths, frozenset(q["id"] for q in qs))
    if cfg.judge in ("openai", "both"):
        metrics["judges"].append("llm")
        metrics["llm"] = _llm(cfg, records, paths.judge_cache)
    if cfg.judge == "both":
        metrics["agreement_spearman"] = {
            c: spearman(
                [(r.get("offline") or {}).get(c) for r in records],
                [(r.get("llm") or {}).get(c) for r in records],
            )
            for c in CRITERIA
        }
    metrics["surface"] = summary.surface(
        records, {"base_model": [a.ended for a in base], "gen": [a.ended for a in gen]}
    )
    for name, rows in summary.plot_data(metrics, records, CRITERIA).items():
        write_json(paths.plots_dir / f"{name}.json", rows)
    write_jsonl(
        paths.out_dir / "scores.jsonl",
        [{k: v for k, v in r.items() if k not in ("instruction", "context")} for r in records],
    )
    with atomic_open(paths.report) as f:
        f.write(tables.report(metrics))
    return metrics
