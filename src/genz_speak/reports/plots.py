"""PNG plots (they render offline, unlike the HTML of `dvc plots show`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI and servers
import matplotlib.pyplot as plt
import pandas as pd

from genz_speak.io import atomic_open

LABELS = {
    "base": "Base\n(raw instruction)",
    "base_model": "Base model",
    "gen": "Gen\n(fine-tuned)",
    "train": "Train\n(teacher)",
}
CRITERION_TITLES = {
    "style": "Gen Z style (offline classifier)",
    "content": "Content preservation (embedding similarity)",
    "fluency": "Fluency (base-model perplexity)",
    "genz_style": "Gen Z style (LLM judge)",
    "helpfulness": "Helpfulness (LLM judge)",
    "coherence": "Coherence (LLM judge)",
}


def headline(scores: pd.DataFrame) -> str:
    """The criterion the original project plotted: Gen Z style, from the LLM judge when there is one."""
    if "genz_style" in scores and scores["genz_style"].notna().any():
        return "genz_style"
    return "style"


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
        title=f"Score distribution: {CRITERION_TITLES[crit]}",
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
        title=f"Base / Gen / Train: {CRITERION_TITLES[crit]}",
        ylabel="normalised score [0, 1]",
        ylim=(-0.05, 1.1),
    )
    _save(fig, path, dpi)


def criteria_bars(groups: dict[str, Any], path: Path, dpi: int) -> None:
    criteria = list(next(iter(groups.values())).keys())
    fig, ax = plt.subplots(figsize=(max(7, 2.2 * len(criteria)), 4.2))
    width = 0.8 / len(LABELS)
    for j, (group, label) in enumerate(LABELS.items()):
        stats = [groups[group][c] for c in criteria]
        means = [s["mean"] or 0.0 for s in stats]
        err = [
            [(s["mean"] - s["ci_low"]) if s["mean"] is not None else 0.0 for s in stats],
            [(s["ci_high"] - s["mean"]) if s["mean"] is not None else 0.0 for s in stats],
        ]
        xs = [i + (j - (len(LABELS) - 1) / 2) * width for i in range(len(criteria))]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=label.replace("\n", " "))
    ax.set_xticks(range(len(criteria)), [c.replace("_", " ") for c in criteria])
    ax.set(
        title="Mean score per criterion (95% bootstrap interval)",
        ylabel="normalised score [0, 1]",
        ylim=(0, 1.05),
    )
    ax.legend(fontsize=8, ncols=2)
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
