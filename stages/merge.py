"""merge: the LoRA adapter merged onto the 16-bit base -> a deployable model folder, verified.

    python stages/merge.py --base models/prepare --adapter models/train --heldout data/prepare/heldout.jsonl \
        --out models/merge --metrics metrics/merge.json

Reads `merge` from params.yaml. Writes safetensors, tokenizer, chat template and generation config to
--out, and the max |logit difference| between the saved merged model and base + adapter (on the first
held-out prompts) to --metrics; fails, writing no model, when it exceeds merge.tolerance.
"""

from pathlib import Path

from genz_speak import stage
from genz_speak.data.dataset import read_split
from genz_speak.io import write_json
from genz_speak.training.merge import merge


def main() -> None:
    p = stage.parser(__doc__)
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--heldout", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    args = p.parse_args()
    cfg = stage.start("merge", args)
    write_json(args.metrics, merge(cfg, args.base, args.adapter, args.out, read_split(args.heldout)))


if __name__ == "__main__":
    stage.run(main)
