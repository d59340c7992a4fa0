"""plot: PNG plots of the evaluation and of training.

    python stages/plot.py --scores data/evaluate/scores.jsonl --metrics metrics/evaluate.json \
        --live-dir dvclive/train --out-dir plots

Reads `plot` from params.yaml. Writes score_distribution.png, comparison_box.png, criteria_bars.png,
paired_difference.png and training_curves.png under --out-dir (declared as DVC plots).
"""

import json
from pathlib import Path

from genz_speak import stage
from genz_speak.io import read_jsonl
from genz_speak.reports import plots


def main() -> None:
    p = stage.parser(__doc__)
    p.add_argument("--scores", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--live-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args()
    cfg = stage.start("plot", args)

    scores = plots.flatten(read_jsonl(args.scores))
    metrics = json.loads(args.metrics.read_text())
    plots.score_distribution(scores, args.out_dir / "score_distribution.png", cfg.dpi)
    plots.comparison_box(scores, args.out_dir / "comparison_box.png", cfg.dpi)
    plots.criteria_bars(metrics, args.out_dir / "criteria_bars.png", cfg.dpi)
    plots.paired_difference(metrics, args.out_dir / "paired_difference.png", cfg.dpi)
    plots.training_curves(args.live_dir, args.out_dir / "training_curves.png", cfg.dpi)


if __name__ == "__main__":
    stage.run(main)
