"""plot: PNG plots of the evaluation and of training (they render offline, unlike `dvc plots show`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genz_speak.config import PlotConfig
from genz_speak.io import read_jsonl


@dataclass(frozen=True)
class Paths:
    scores: Path  # evaluate's data/evaluate/scores.jsonl
    evaluation: Path  # metrics/evaluate.json
    live_dir: Path  # train's DVCLive folder (the curves)
    out_dir: Path  # the PNG files


def run(cfg: PlotConfig, paths: Paths) -> dict[str, Any]:
    """Write the five PNG plots; their names and sizes are the metrics."""
    from genz_speak.reports import plots

    scores = plots.flatten(read_jsonl(paths.scores))
    evaluation = json.loads(paths.evaluation.read_text())
    out = paths.out_dir
    plots.score_distribution(scores, out / "score_distribution.png", cfg.dpi)
    plots.comparison_box(scores, out / "comparison_box.png", cfg.dpi)
    plots.criteria_bars(evaluation, out / "criteria_bars.png", cfg.dpi)
    plots.paired_difference(evaluation, out / "paired_difference.png", cfg.dpi)
    plots.training_curves(paths.live_dir, out / "training_curves.png", cfg.dpi)
    return {"plots": sorted(p.name for p in out.glob("*.png"))}
