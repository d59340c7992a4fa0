"""evaluate: the base and merged models answer held-out (+ validation) questions; judges score them.

    python stages/evaluate.py --base models/prepare --merged models/merge --data-dir data/prepare \
        --dataset data/generate/genz_dataset.jsonl --corpus data/genz_corpus.jsonl --out-dir data/evaluate \
        --plots-dir plots/evaluate --judge-cache .cache/judge.jsonl --offline-cache .cache/offline-judge \
        --answer-cache .cache/answers.jsonl --metrics metrics/evaluate.json --report metrics/report.md

Reads `evaluate` from params.yaml, and the hand-written Gen Z corpus (--corpus) the offline judge's style
model is fitted on. Writes answers.jsonl and per-answer scores.jsonl under --out-dir; per judge, the
Base / Base model / Gen / Train comparison (mean, std, n, 95% bootstrap interval per criterion) and the
paired Gen - Base model difference to --metrics, with surface statistics (distinct openings, emoji);
and a readable report to --report; means.json, paired.json and scores.json under --plots-dir, the data of
`dvc plots` (templates in .dvc/plots/). LLM-judge verdicts are cached in --judge-cache and answers (per
batch) in --answer-cache, so a killed run resumes where it stopped; the offline judge keeps its cut LM and
fitted style model in --offline-cache.
"""

from genz_speak import stage
from genz_speak.pipeline import evaluate

if __name__ == "__main__":
    stage.main(__doc__, "evaluate", evaluate.Paths, evaluate.run)
