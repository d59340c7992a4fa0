"""`genz-speak judge-check`: score the labelled calibration set with a judge (offline, or an LLM through
any OpenAI-compatible server) and print how well it agrees with the labels, before relying on it.

    genz-speak judge-check                                    # the offline judge
    genz-speak judge-check --judge openai --model gpt-5-mini  # an LLM judge (key from $OPENAI_API_KEY)
    genz-speak judge-check --judge openai --base-url http://localhost:8000/v1 --model Qwen/Qwen3-8B
    genz-speak judge-check --annotators                       # the two human annotators' agreement
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from genz_speak.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", choices=("offline", "openai"), default="offline")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="its `evaluate` section")
    p.add_argument("--calibration", type=Path, default=Path("data/judge_calibration.jsonl"))
    p.add_argument(
        "--corpus", type=Path, default=Path("data/genz_corpus.jsonl"), help="fits the offline style model"
    )
    p.add_argument("--model", help="LLM judge model (default: evaluate.llm.model)")
    p.add_argument("--base-url", help="any OpenAI-compatible server (default: evaluate.llm.base_url)")
    p.add_argument("--api-key-env", help="the NAME of the variable holding the key")
    p.add_argument(
        "--reference-guided",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the judge the reference answer (default: evaluate.llm.reference_guided)",
    )
    p.add_argument("--questions", type=int, help="only the first N questions (every kind of each)")
    p.add_argument("--cache", type=Path, help="LLM verdicts, reused (default: $GENZ_SPEAK_CACHE/judge.jsonl)")
    p.add_argument(
        "--offline-cache",
        type=Path,
        help="the offline judge's LM and fit (default: $GENZ_SPEAK_CACHE/offline-judge)",
    )
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    p.add_argument(
        "--annotators",
        action="store_true",
        help="print how the second annotator's blind labels (--second-labels) agree with the set's; no judge",
    )
    p.add_argument("--second-labels", type=Path, default=Path("data/judge_calibration_second.jsonl"))
    p.add_argument(
        "--split",
        choices=("all", "dev", "untouched"),
        default="all",
        help="all: the whole set and, apart, its untouched part; dev: only the rows a judge may be tuned on",
    )


def _judge_check(args: argparse.Namespace) -> None:
    from genz_speak.data.corpus import read_corpus
    from genz_speak.io import write_json
    from genz_speak.judges.calibration import (
        agreement,
        annotator_agreement,
        read_calibration,
        run_judge,
        table,
    )
    from genz_speak.params import load_params

    cfg = load_params(args.params).evaluate if args.params.is_file() else None
    if cfg is None:
        from genz_speak.config import EvaluateConfig

        cfg = EvaluateConfig()
    overrides = {
        k: v
        for k, v in {
            "model": args.model,
            "base_url": args.base_url,
            "api_key_env": args.api_key_env,
            "reference_guided": args.reference_guided,
        }.items()
        if v is not None
    }
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, **overrides))
    rows = read_calibration(args.calibration)
    if args.annotators:
        result = annotator_agreement(rows, args.second_labels)
        print(f"# two annotators on {args.calibration}: {result['rows']} rows labelled by both\n")
        print("| criterion | Spearman | largest difference |\n|---|---|---|")
        for c, rho in result["spearman"].items():
            print(f"| {c} | {rho} | {result['max_difference'][c]} |")
        return
    if args.split != "all":
        rows = [r for r in rows if r["split"] == args.split]
    if args.questions:
        keep = list(dict.fromkeys(r["qid"] for r in rows))[: args.questions]
        rows = [r for r in rows if r["qid"] in keep]
    corpus = read_corpus(args.corpus) if args.judge == "offline" else []
    from genz_speak.cache import cache_root

    cache = args.cache or cache_root() / "judge.jsonl"  # the stages' caches, shared with them
    offline_cache = args.offline_cache or cache_root() / "offline-judge"
    scores, info = run_judge(args.judge, cfg, rows, corpus, cache, offline_cache)
    result = agreement(rows, scores)
    name = "offline" if args.judge == "offline" else f"LLM judge {cfg.llm.model}"
    part = "" if args.split == "all" else f" ({args.split} part)"
    print(f"# judge-check: {name} on {args.calibration}{part}\n\n{table(result)}")
    if args.split == "all":
        untouched = [i for i, r in enumerate(rows) if r["split"] == "untouched"]
        if untouched:
            result["untouched"] = agreement([rows[i] for i in untouched], [scores[i] for i in untouched])
            print(
                f"## The untouched part (kept out of every fit and threshold)\n\n{table(result['untouched'])}"
            )
    if args.out:
        write_json(args.out, {"judge": args.judge, **info, **result})


def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        _judge_check(args)
    except InputError as err:
        print(f"genz-speak judge-check: {err}", file=sys.stderr)
        raise SystemExit(2) from None
