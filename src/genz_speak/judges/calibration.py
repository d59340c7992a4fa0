"""Holding a judge to labelled answers: the calibration set, its checks, and how well a judge agrees.

`data/judge_calibration.jsonl` holds hand-written answers of fifteen kinds to questions (shipped and new),
each labelled 0-10 for genz_style, helpfulness and coherence by `docs/judge_rubric.md`. A judge's scores
are compared with the labels by Spearman's rank correlation per criterion, by its mean score per kind,
by how often it orders two answers to the same question the way their kinds say it must, and by the gaps
that must stay small (a valid open-ended answer unlike the reference against a plain correct one; heavy
Gen Z against light). Rows of the `untouched` split were kept out of every fit and every threshold
choice; judge-check reports them apart.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from genz_speak.config import EvaluateConfig
from genz_speak.errors import InputError
from genz_speak.io import read_jsonl
from genz_speak.judges import CRITERIA
from genz_speak.reports.stats import spearman

KINDS = (
    "plain_correct",
    "genz_correct",
    "genz_wrong_facts",
    "plain_wrong_facts",
    "caricature",
    "repetition",
    "offtopic_genz",
    "truncated",
    "spam",
    "refusal",
    "plain_flipped",  # one claim flipped in the same words: no number or name changed
    "genz_flipped",
    "extra_detail",  # correct, with true detail the reference lacks
    "short_correct",
    "open_valid",  # a valid answer to an open-ended task, unlike the reference
)
SPLITS = ("dev", "untouched")
REGISTERS = ("light", "medium", "heavy")
FIELDS = {
    "id": str,
    "qid": str,
    "shipped": bool,
    "category": str,
    "instruction": str,
    "context": str,
    "reference": str,
    "kind": str,
    "register": (str, type(None)),
    "answer": str,
    "genz_style": int,
    "helpfulness": int,
    "coherence": int,
    "note": str,
    "split": str,
}
# (criterion, the kind that must score higher, the kind that must score lower), per question.
ORDERINGS = (
    ("genz_style", "genz_correct", "caricature"),
    ("genz_style", "genz_correct", "plain_correct"),
    ("helpfulness", "genz_correct", "genz_wrong_facts"),
    ("helpfulness", "plain_correct", "plain_wrong_facts"),
    ("helpfulness", "genz_correct", "genz_flipped"),
    ("helpfulness", "plain_correct", "plain_flipped"),
    ("coherence", "genz_correct", "repetition"),
    ("coherence", "plain_correct", "repetition"),
)


def _calibration_row(row: dict[str, Any]) -> dict[str, Any]:
    missing = sorted(set(FIELDS) - set(row))
    if missing:
        raise InputError(f"missing field(s) {missing}")
    extra = sorted(set(row) - set(FIELDS))
    if extra:
        raise InputError(f"unknown field(s) {extra}")
    for name, kind in FIELDS.items():
        if (isinstance(row[name], bool) and kind is int) or not isinstance(row[name], kind):
            raise InputError(f"field {name!r} has the wrong type ({type(row[name]).__name__})")
    if row["kind"] not in KINDS:
        raise InputError(f"kind {row['kind']!r} is not one of {KINDS}")
    if row["split"] not in SPLITS:
        raise InputError(f"split {row['split']!r} is not one of {SPLITS}")
    if row["register"] is not None and row["register"] not in REGISTERS:
        raise InputError(f"register {row['register']!r} is not one of {REGISTERS} or null")
    for c in CRITERIA:
        if not 0 <= row[c] <= 10:
            raise InputError(f"label {c}={row[c]} is outside 0-10")
    if not row["answer"].strip():
        raise InputError("empty answer")
    if row["answer"].strip() == row["reference"].strip():
        raise InputError("the answer is identical to its reference (it would test nothing)")
    return row


def read_calibration(path: Path) -> list[dict[str, Any]]:
    """The labelled calibration set, every row checked (errors name the file and line)."""
    return read_jsonl(path, allow_empty=False, unique="id", check=_calibration_row)


SECOND_FIELDS = {"id": str, "genz_style": int, "helpfulness": int, "coherence": int, "note": str}


def _second_label(row: dict[str, Any]) -> dict[str, Any]:
    if set(row) != set(SECOND_FIELDS):
        raise InputError(f"fields {sorted(row)}; second-annotator rows have exactly {sorted(SECOND_FIELDS)}")
    for c in CRITERIA:
        if isinstance(row[c], bool) or not isinstance(row[c], int) or not 0 <= row[c] <= 10:
            raise InputError(f"label {c}={row[c]!r} is not an integer in 0-10")
    return row


def annotator_agreement(rows: list[dict[str, Any]], second_path: Path) -> dict[str, Any]:
    """How the second annotator's blind labels (`second_path`: id and the three labels) agree with the
    calibration set's: Spearman per criterion and the largest difference, over the rows both labelled."""
    second = {
        r["id"]: r for r in read_jsonl(second_path, allow_empty=False, unique="id", check=_second_label)
    }
    both = [r for r in rows if r["id"] in second]
    return {
        "rows": len(both),
        "spearman": {c: spearman([r[c] for r in both], [second[r["id"]][c] for r in both]) for c in CRITERIA},
        "max_difference": {c: max(abs(r[c] - second[r["id"]][c]) for r in both) for c in CRITERIA},
    }


def agreement(rows: list[dict[str, Any]], scores: list[dict[str, float | None]]) -> dict[str, Any]:
    """How a judge's scores (one dict of criteria per row, None where it failed) agree with the labels."""
    criteria = [c for c in CRITERIA if any(s.get(c) is not None for s in scores)]
    result: dict[str, Any] = {
        "rows": len(rows),
        "questions": len({r["qid"] for r in rows}),
        "failed": sum(any(s.get(c) is None for c in criteria) for s in scores),
        "spearman": {c: spearman([s.get(c) for s in scores], [r[c] for r in rows]) for c in criteria},
    }
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        if not idx:
            continue
        by_kind[kind] = {"n": len(idx)}
        for c in criteria:
            vals = [scores[i][c] for i in idx if scores[i].get(c) is not None]
            by_kind[kind][c] = {
                "score": round(float(np.mean(vals)), 4) if vals else None,
                "label": round(float(np.mean([rows[i][c] for i in idx])) / 10, 4),
            }
    result["by_kind"] = by_kind
    per_question: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(rows):
        per_question[r["qid"]][r["kind"]].append(i)
    orderings = {}
    for c, high, low in ORDERINGS:
        if c not in criteria:
            continue
        wins = []
        for kinds in per_question.values():
            hi = [scores[i][c] for i in kinds.get(high, []) if scores[i].get(c) is not None]
            lo = [scores[i][c] for i in kinds.get(low, []) if scores[i].get(c) is not None]
            if hi and lo:
                wins.append(float(np.mean(hi) > np.mean(lo)))
        orderings[f"{c}: {high} > {low}"] = {
            "accuracy": round(float(np.mean(wins)), 4) if wins else None,
            "pairs": len(wins),
        }
    result["orderings"] = orderings
    result["gaps"] = _gaps(rows, scores, per_question) if "helpfulness" in criteria else {}
    if "coherence" in criteria:
        means = {
            k: v["coherence"]["score"] for k, v in by_kind.items() if v["coherence"]["score"] is not None
        }
        result["lowest_coherence_kind"] = min(means, key=means.__getitem__) if means else None
    return result


def _gaps(
    rows: list[dict[str, Any]],
    scores: list[dict[str, float | None]],
    per_question: dict[str, dict[str, list[int]]],
) -> dict[str, dict[str, Any]]:
    """Helpfulness gaps that must stay small, as the mean over questions of (first - second) for the judge
    and for the labels: plain correct vs a valid open-ended answer unlike the reference; light vs heavy
    Gen Z, both correct."""

    def pick(kinds: dict[str, list[int]], which: tuple[str, str | None]) -> list[int]:
        kind, register = which
        return [i for i in kinds.get(kind, []) if register is None or rows[i]["register"] == register]

    out = {}
    for name, first, second in (
        ("plain_correct - open_valid", ("plain_correct", None), ("open_valid", None)),
        ("genz light - genz heavy", ("genz_correct", "light"), ("genz_correct", "heavy")),
    ):
        judged, labelled = [], []
        for kinds in per_question.values():
            a, b = pick(kinds, first), pick(kinds, second)
            sa = [scores[i]["helpfulness"] for i in a if scores[i].get("helpfulness") is not None]
            sb = [scores[i]["helpfulness"] for i in b if scores[i].get("helpfulness") is not None]
            if sa and sb:
                judged.append(float(np.mean(sa) - np.mean(sb)))
                labelled.append(
                    float(
                        np.mean([rows[i]["helpfulness"] for i in a])
                        - np.mean([rows[i]["helpfulness"] for i in b])
                    )
                    / 10
                )
        out[f"helpfulness: {name}"] = {
            "gap": round(float(np.mean(judged)), 4) if judged else None,
            "label_gap": round(float(np.mean(labelled)), 4) if labelled else None,
            "questions": len(judged),
        }
    return out


def table(result: dict[str, Any]) -> str:
    """The agreement as markdown tables: Spearman, orderings, then mean score (and label) per kind."""
    criteria = list(result["spearman"])
    lines = [
        f"{result['rows']} labelled answers to {result['questions']} questions"
        + (f"; {result['failed']} judgements failed" if result["failed"] else ""),
        "",
        "| criterion | Spearman vs labels |",
        "|---|---|",
        *(f"| {c} | {_num(result['spearman'][c])} |" for c in criteria),
        "",
        "| ordering (same question) | accuracy | pairs |",
        "|---|---|---|",
        *(f"| {k} | {_num(v['accuracy'])} | {v['pairs']} |" for k, v in result["orderings"].items()),
        "",
        "| gap (same question, mean) | judge | labels | questions |",
        "|---|---|---|---|",
        *(
            f"| {k} | {_num(v['gap'])} | {_num(v['label_gap'])} | {v['questions']} |"
            for k, v in result.get("gaps", {}).items()
        ),
        "",
        "| kind | n | " + " | ".join(f"{c} (label)" for c in criteria) + " |",
        "|---|---|" + "---|" * len(criteria),
    ]
    for kind, v in result["by_kind"].items():
        cells = [f"{_num(v[c]['score'], 2)} ({v[c]['label']:.2f})" for c in criteria]
        lines.append(f"| {kind} | {v['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def run_judge(
    judge: str,
    cfg: EvaluateConfig,
    rows: list[dict[str, Any]],
    corpus: list[dict[str, Any]],
    cache: Path,
    offline_cache: Path,
) -> tuple[list[dict[str, float | None]], dict[str, Any]]:
    """Score the calibration rows with the offline judge or the LLM judge (`cfg.llm`); returns the scores
    and what the judge reports about itself (the style model's accuracy, or requests and failures)."""
    if judge == "offline":
        from genz_speak.judges.offline import Item, OfflineJudge

        offline = OfflineJudge(cfg.offline, corpus, offline_cache)
        scores = offline.score(
            [Item(r["instruction"], r["context"], r["answer"], r["reference"], r["category"]) for r in rows]
        )
        return scores, {"style_model_heldout_accuracy": offline.style.heldout_accuracy}
    from genz_speak.judges.llm import LLMJudge

    llm = LLMJudge(cfg.llm, cache)
    question = [f"{r['instruction']}\n\n{r['context']}" if r["context"] else r["instruction"] for r in rows]
    verdicts = llm.judge([(q, r["answer"], r["reference"]) for q, r in zip(question, rows, strict=True)])
    llm.close()
    errors = sorted({v.error for v in verdicts if v.error})
    info = {"model": cfg.llm.model, "requests": llm.requests, "errors": errors[:5]}
    return [v.scores or dict.fromkeys(CRITERIA) for v in verdicts], info
