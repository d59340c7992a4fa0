"""PNG plots (they render offline, unlike the HTML of `dvc plots show`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI and servers
import matplotlib.pyplot as plt
import pandas as pd

from genz_speak.io import atomic_open
from genz_speak.reports.tables import CRITERION_TITLES, GROUPS, JUDGES, short_label

LABELS = {group: short_label(group) for group in GROUPS}


def flatten(records: list[dict[str, Any]]) -> pd.DataFrame:
    """scores.jsonl as a frame: one row per judged text, a column per judge and criterion
    ("offline.genz_style", "llm.helpfulness", ...)."""
    return pd.json_normalize(records)


def headline(scores: pd.DataFrame) -> str:
    """The column the original project plotted: Gen Z style, from the LLM judge when there is one."""
    if "llm.genz_style" in scores and scores["llm.genz_style"].notna().any():
        return "llm.genz_style"
    return "offline.genz_style"


def _title(column: str) -> str:
    judge, criterion = column.split(".", 1)
    return f"{CRITERION_TITLES[criterion]} ({JUDGES[judge]})"


def _save(fig: Any, path: Path, dpi: int) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)


def score_distribution(scores: pd.DataFrame, path: Path, dpi: int) -> None:
    crit = headline(scores)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bins = [i / 10 for i in range(11)]
    for group, label in LABELS.items():
        vals = scores.loc[scores["group"] == group, crit].dropna()
        if len(vals):
            ax.hist(
                vals,
                bins=bins,
                histtype="step",
                linewidth=2,
                label=f"{label.replace(chr(10), ' ')} (n={len(vals)})",
            )
    ax.set(
        title=f"Score distribution: {_title(crit)}",
        xlabel="score (0 = plain, 1 = full Gen Z)",
        ylabel="answers",
        xlim=(0, 1),
    )
    ax.legend(fontsize=8)
    _save(fig, path, dpi)


def comparison_box(scores: pd.DataFrame, path: Path, dpi: int) -> None:
    crit = headline(scores)
    groups = [g for g in LABELS if (scores["group"] == g).any()]
    data = [scores.loc[scores["group"] == g, crit].dropna() for g in groups]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.boxplot(data, tick_labels=[LABELS[g] for g in groups], showmeans=True)
    for i, d in enumerate(data, start=1):
        ax.annotate(f"{d.mean():.2f}±{d.std(ddof=0):.2f}", (i, 1.02), ha="center", fontsize=8)
    ax.set(
        title=f"Base / Gen / Train: {_title(crit)}",
        ylabel="normalised score [0, 1]",
        ylim=(-0.05, 1.1),
    )
    _save(fig, path, dpi)


def criteria_bars(metrics: dict[str, Any], path: Path, dpi: int) -> None:
    """Mean per group and criterion with its 95% interval, one panel per judge."""
    judges = metrics["judges"]
    fig, axes = plt.subplots(1, len(judges), figsize=(7 * len(judges), 4.2), squeeze=False)
    width = 0.8 / len(LABELS)
    for ax, judge in zip(axes[0], judges, strict=True):
        groups = metrics[judge]["groups"]
        criteria = list(CRITERION_TITLES)
        for j, (group, label) in enumerate(LABELS.items()):
            stats = [groups[group][c] for c in criteria]
            means = [s["mean"] or 0.0 for s in stats]
            err = [
                [(s["mean"] - s["ci_low"]) if s["mean"] is not None else 0.0 for s in stats],
                [(s["ci_high"] - s["mean"]) if s["mean"] is not None else 0.0 for s in stats],
            ]
            xs = [i + (j - (len(LABELS) - 1) / 2) * width for i in range(len(criteria))]
            ax.bar(xs, means, width, yerr=err, capsize=3, label=label.replace("\n", " "))
        ax.set_xticks(range(len(criteria)), [CRITERION_TITLES[c] for c in criteria])
        ax.set(
            title=f"Mean score per criterion, {JUDGES[judge]} (95% interval)",
            ylabel="score [0, 1]",
            ylim=(0, 1.05),
        )
        ax.legend(fontsize=8, ncols=2)
    _save(fig, path, dpi)


def paired_difference(metrics: dict[str, Any], path: Path, dpi: int) -> None:
    """Gen - Base model per criterion over the same questions, with its 95% paired interval, per judge."""
    judges = metrics["judges"]
    criteria = list(CRITERION_TITLES)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / len(judges)
    for j, judge in enumerate(judges):
        diffs = [metrics[judge]["paired"][c] for c in criteria]
        means = [d["mean"] or 0.0 for d in diffs]
        err = [
            [(d["mean"] - d["ci_low"]) if d["mean"] is not None else 0.0 for d in diffs],
            [(d["ci_high"] - d["mean"]) if d["mean"] is not None else 0.0 for d in diffs],
        ]
        xs = [i + (j - (len(judges) - 1) / 2) * width for i in range(len(criteria))]
        ax.bar(xs, means, width, yerr=err, capsize=4, label=JUDGES[judge])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(criteria)), [CRITERION_TITLES[c] for c in criteria])
    ax.set(
        title="Fine-tuning effect: Gen − Base model, paired (95% interval)",
        ylabel="difference in score",
        ylim=(-1.0, 1.0),
    )
    ax.legend(fontsize=8)
    _save(fig, path, dpi)


def training_curves(live_dir: Path, path: Path, dpi: int) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, label in (("loss.tsv", "train loss"), ("eval/loss.tsv", "validation loss")):
        f = live_dir / "plots" / "metrics" / name
        if f.is_file():
            df = pd.read_csv(f, sep="\t")
            ax.plot(df["step"], df["loss"], marker="o" if len(df) < 20 else None, label=label)
    ax.set(title="Training curves", xlabel="optimizer step", ylabel="loss (response tokens)")
    ax.legend()
    _save(fig, path, dpi)
