"""plot: PNG plots of the evaluation and of training.

    python stages/plot.py --scores data/evaluate/scores.jsonl --evaluation metrics/evaluate.json \
        --live-dir dvclive/train --out-dir plots --metrics metrics/plot.json

Reads `plot` from params.yaml. Writes score_distribution.png, comparison_box.png, criteria_bars.png,
paired_difference.png and training_curves.png under --out-dir (declared as DVC plots), and their names to
--metrics.
"""

from genz_speak import stage
from genz_speak.pipeline import plot

if __name__ == "__main__":
    stage.main(__doc__, "plot", plot.Paths, plot.run)
