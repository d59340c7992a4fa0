"""prepare: source questions -> train / validation / held-out splits, and the base model as a folder.

    python stages/prepare.py --data-dir data/prepare --model-dir models/prepare --metrics metrics/prepare.json

Reads `prepare` from params.yaml and the source it names (default: data/questions.jsonl, shipped with the
project). Writes {train,validation,heldout}.jsonl under --data-dir, the base model (safetensors, tokenizer,
chat template) under --model-dir, and row counts to --metrics.
"""

from pathlib import Path

from genz_speak import stage
from genz_speak.data.questions import load_source, split_rows
from genz_speak.io import SkipBudget, write_json, write_jsonl
from genz_speak.models import materialize_base_model


def main() -> None:
    p = stage.parser(__doc__)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    args = p.parse_args()
    cfg = stage.start("prepare", args)

    budget = SkipBudget(cfg.max_bad_rows)
    split = split_rows(load_source(cfg, budget), cfg)
    for name in ("train", "validation", "heldout"):
        write_jsonl(args.data_dir / f"{name}.jsonl", getattr(split, name))
    model_info = materialize_base_model(cfg.base_model, args.model_dir, cfg.base_dtype)
    write_json(
        args.metrics,
        {
            "rows": {
                "train": len(split.train),
                "validation": len(split.validation),
                "heldout": len(split.heldout),
            },
            "dropped": {**split.dropped, "bad": len(budget.skipped)},
            "base_model": model_info,
        },
    )


if __name__ == "__main__":
    stage.run(main)
