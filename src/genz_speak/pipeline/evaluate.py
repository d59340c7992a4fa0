"""evaluate: the base and merged models answer held-out (+ validation) questions; judges score every
answer of four groups (Base, Base model, Gen, Train); the comparison, report and plot data are written."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genz_speak.cache import cache_root
from genz_speak.config import EvaluateConfig
from genz_speak.data.chat import user_message
from genz_speak.data.corpus import read_corpus
from genz_speak.data.dataset import read_dataset, read_split
from genz_speak.errors import StageFailed
from genz_speak.io import atomic_open, write_json, write_jsonl
from genz_speak.judges import CRITERIA
from genz_speak.reports import summary, tables
from genz_speak.reports.stats import spearman

if TYPE_CHECKING:
    from genz_speak.generation import Answer

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
    report: Path  # metrics/report.md
    # The caches (LLM verdicts, answers per finished batch, the offline judge's models) are shared by
    # every experiment: under `cache.cache_root()`, not in the workspace.


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


def _offline(judge: Any, records: list[dict[str, Any]], cfg: EvaluateConfig) -> dict[str, Any]:
    from genz_speak.judges.offline import Item

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
        "ending_model": {"heldout_accuracy": round(judge.ending.heldout_accuracy, 4)},
    }


def _llm(
    judge: Any, records: list[dict[str, Any]], cfg: EvaluateConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The LLM judge's summary, and how its run went (requests, tokens, cost: metrics/run/evaluate.json)."""
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
    usage = {"model": cfg.llm.model, "judgements": len(verdicts), "failed": failed}
    run = {
        **judge.usage(),
        "judged": len(verdicts) - sum(v.cached for v in verdicts),
        "cached": sum(v.cached for v in verdicts),
    }
    return {
        **summary.judge_summary(records, "llm", CRITERIA, cfg.bootstrap_samples, cfg.seed),
        "usage": usage,
    }, run


def _judges(cfg: EvaluateConfig, corpus: list[dict[str, Any]], exclude: frozenset[str]) -> dict[str, Any]:
    """The configured judges, built before any answer is generated: a missing key, a dead judge endpoint
    or a bad offline-judge setting stops the stage before it spends minutes answering or writes anything."""
    judges: dict[str, Any] = {}
    if cfg.judge in ("openai", "both"):
        from genz_speak.judges.llm import LLMJudge

        judges["llm"] = LLMJudge(cfg.llm, cache_root() / "judge.jsonl")
    if cfg.judge in ("offline", "both"):
        from genz_speak.judges.offline import OfflineJudge

        judges["offline"] = OfflineJudge(cfg.offline, corpus, cache_root() / "offline-judge", exclude=exclude)
    return judges


def run(cfg: EvaluateConfig, paths: Paths) -> dict[str, Any]:
    """Check the judges, answer, judge and summarise; then write answers, per-answer scores, plot data and
    the report together (a failure anywhere before leaves the previous outputs as they were)."""
    from genz_speak.generation import answer_questions

    qs = questions(
        cfg, read_split(paths.data_dir / "heldout.jsonl"), read_split(paths.data_dir / "validation.jsonl")
    )
    dataset = read_dataset(paths.dataset)
    corpus = read_corpus(paths.corpus)
    judges = _judges(cfg, corpus, frozenset(q["id"] for q in qs))
    answer_cache = cache_root() / "answers.jsonl"
    base = answer_questions(paths.base, qs, answer_cache, decoding=cfg.decoding, batch_size=cfg.batch_size)
    gen = answer_questions(paths.merged, qs, answer_cache, decoding=cfg.decoding, batch_size=cfg.batch_size)
    records = build_records(
        qs, [a.text for a in base], [a.text for a in gen], {r["id"]: r["output"] for r in dataset}
    )
    metrics: dict[str, Any] = {"questions": len(qs), "judges": []}
    run_info: dict[str, Any] = {}
    if "offline" in judges:
        metrics["judges"].append("offline")
        metrics["offline"] = _offline(judges["offline"], records, cfg)
    if "llm" in judges:
        metrics["judges"].append("llm")
        metrics["llm"], run_info["llm"] = _llm(judges["llm"], records, cfg)
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
    _write(paths, qs, base, gen, records, tables.report(metrics, run_info), metrics)
    return {**metrics, "run": run_info}


def _write(
    paths: Paths,
    qs: list[dict[str, Any]],
    base: list[Answer],
    gen: list[Answer],
    records: list[dict[str, Any]],
    report: str,
    metrics: dict[str, Any],
) -> None:
    for name, rows in summary.plot_data(metrics, records, CRITERIA).items():
        write_json(paths.plots_dir / f"{name}.json", rows)
    answers = [
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
    ]
    write_jsonl(paths.out_dir / "answers.jsonl", answers)
    write_jsonl(
        paths.out_dir / "scores.jsonl",
        [{k: v for k, v in r.items() if k not in ("instruction", "context")} for r in records],
    )
    with atomic_open(paths.report) as f:
        f.write(report)
