"""evaluate: the base and merged models answer held-out (+ validation) questions; judges score them.

    python stages/evaluate.py --base models/prepare --merged models/merge --data-dir data/prepare \
        --dataset data/generate/genz_dataset.jsonl --corpus data/genz_corpus.jsonl --out-dir data/evaluate \
        --plots-dir plots/evaluate --report metrics/report.md --metrics metrics/evaluate.json \
        --run-info metrics/run/evaluate.json

Reads `evaluate` from params.yaml, and the hand-written Gen Z corpus (--corpus) the offline judge's style
model is fitted on. The judges are checked first (the LLM judge's key and endpoint), then the models
answer. Writes answers.jsonl and per-answer scores.jsonl under --out-dir; per judge, the Base / Base
model / Gen / Train comparison (mean, std, n, 95% bootstrap interval per criterion) and the paired Gen -
Base model difference to --metrics, with surface statistics (distinct openings, emoji); the LLM judge's
requests, tokens and cost to --run-info; a readable report to --report; means.json, paired.json and
scores.json under --plots-dir, the data of `dvc plots` (templates in .dvc/plots/). Answers (per batch),
LLM-judge verdicts and the offline judge's cut LM and fitted style model go to the shared cache
($GENZ_SPEAK_CACHE), so a killed run resumes where it stopped and experiments reuse them.
"""

from genz_speak import stage
from genz_speak.pipeline import evaluate

if __name__ == "__main__":
    stage.main(__doc__, "evaluate", evaluate.Paths, evaluate.run)
