"""The evaluation summarised: per group and criterion the mean with its interval, the paired fine-tuning
effect, surface statistics, and the flat rows DVC's vega plots read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genz_speak import text as T
from genz_speak.reports.stats import paired_difference, summarize
from genz_speak.reports.tables import GROUPS

ANSWER_GROUPS = ("base_model", "gen", "train")  # groups of real answers (surface statistics apply)
PAIRED = ("gen", "base_model")  # the fine-tuning effect: the same questions answered by both models


def judge_summary(
    records: list[dict[str, Any]], judge: str, criteria: Sequence[str], samples: int, seed: int
) -> dict[str, Any]:
    """Per group and criterion: mean, std, n and 95% interval; and the paired Gen - Base model
    difference per criterion over the questions both answered."""

    def scores(group: str, c: str) -> dict[str, float | None]:
        return {r["id"]: (r.get(judge) or {}).get(c) for r in records if r["group"] == group}

    groups = {
        group: {c: summarize(list(scores(group, c).values()), samples, seed) for c in criteria}
        for group in GROUPS
    }
    paired = {}
    for c in criteria:
        gen, base = scores(PAIRED[0], c), scores(PAIRED[1], c)
        ids = sorted(gen.keys() & base.keys())
        paired[c] = paired_difference([gen[i] for i in ids], [base[i] for i in ids], samples, seed)
    return {"groups": groups, "paired": paired}


def surface(records: list[dict[str, Any]], ended: dict[str, list[bool]] | None = None) -> dict[str, Any]:
    """What a template-learning model gives away without any judge: the share of distinct opening
    trigrams, the share of answers with emoji, and the mean length, per group of answers; for the models'
    groups (`ended`: whether each answer ended its turn itself) the share that stopped before the token
    limit, and the mean length over the teacher's (Train's) on the same questions."""
    out: dict[str, Any] = {}
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
    for group, flags in (ended or {}).items():
        if group in out and flags:
            out[group]["ended_share"] = round(sum(flags) / len(flags), 4)
    teacher = {r["id"]: len(T.words(r["text"])) for r in records if r["group"] == "train"}
    for group in ("base_model", "gen"):
        # Over the questions the teacher answered too (a rejected rewrite leaves its question out).
        pairs = [
            (len(T.words(r["text"])), teacher[r["id"]])
            for r in records
            if r["group"] == group and r["id"] in teacher
        ]
        if group in out and pairs and sum(t for _, t in pairs):
            out[group]["words_vs_train"] = round(sum(n for n, _ in pairs) / sum(t for _, t in pairs), 3)
    return out


def plot_data(
    metrics: dict[str, Any], records: list[dict[str, Any]], criteria: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
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
        for c in criteria
        if (r.get(judge) or {}).get(c) is not None
    ]
    return {"means": means, "paired": paired, "scores": scores}
