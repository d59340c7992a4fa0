"""evaluate: the base and merged models answer held-out (+ validation) questions; judges score them.

    python stages/evaluate.py --base models/prepare --merged models/merge --data-dir data/prepare \
        --dataset data/generate/genz_dataset.jsonl --corpus data/genz_corpus.jsonl --out-dir data/evaluate \
        --judge-cache .cache/judge.jsonl --answer-cache .cache/answers.jsonl --metrics metrics/evaluate.json \
        --report metrics/report.md

Reads `evaluate` from params.yaml, and the hand-written Gen Z corpus (--corpus) the offline judge's style
model is fitted on. Writes answers.jsonl and per-answer scores.jsonl under --out-dir; per judge, the
Base / Base model / Gen / Train comparison (mean, std, n, 95% bootstrap interval per criterion) and the
paired Gen - Base model difference to --metrics, with surface statistics (distinct openings, emoji);
and a readable report to --report. LLM-judge verdicts are cached in --judge-cache and answers (per
batch) in --answer-cache, so a killed run resumes where it stopped.
"""

from pathlib import Path

from genz_speak import stage
from genz_speak.data.corpus import read_corpus
from genz_speak.data.dataset import read_dataset, read_split
from genz_speak.io import write_json
from genz_speak.judges.evaluate import evaluate, write_report


def main() -> None:
    p = stage.parser(__doc__)
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--merged", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--judge-cache", type=Path, required=True)
    p.add_argument("--answer-cache", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    args = p.parse_args()
    cfg = stage.start("evaluate", args)

    metrics, report = evaluate(
        cfg,
        args.base,
        args.merged,
        read_split(args.data_dir / "heldout.jsonl"),
        read_split(args.data_dir / "validation.jsonl"),
        read_dataset(args.dataset),
        read_corpus(args.corpus),
        args.out_dir,
        args.judge_cache,
        args.answer_cache,
    )
    write_json(args.metrics, metrics)
    write_report(args.report, report)


if __name__ == "__main__":
    stage.run(main)
