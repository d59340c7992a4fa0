"""export: the merged model as GGUF files (checked against it), an Ollama Modelfile and a model card.

    python stages/export.py --merged models/merge --heldout data/prepare/heldout.jsonl --out models/export \
        --metrics metrics/export.json --run-metrics metrics/prepare.json metrics/generate.json \
        metrics/train.json metrics/merge.json metrics/evaluate.json

Reads `export` from params.yaml (and the other sections, for the model card). Writes to --out one GGUF
file per export.formats, each reloaded through transformers and compared with the merged model on the
first held-out prompts (max |logit difference|, tokenizer, chat template), a Modelfile over the
export.modelfile_from file, and README.md, the model card built from the --run-metrics files. Sizes and
checks go to --metrics; when a check fails the stage writes nothing.
"""

import json
from pathlib import Path

from genz_speak import stage
from genz_speak.config import load_params
from genz_speak.data.dataset import read_split
from genz_speak.errors import MissingInput
from genz_speak.export.build import export
from genz_speak.io import write_json


def main() -> None:
    p = stage.parser(__doc__)
    p.add_argument("--merged", type=Path, required=True)
    p.add_argument("--heldout", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--run-metrics", type=Path, nargs="+", required=True, help="metrics/<stage>.json files")
    args = p.parse_args()
    stage.start("export", args)
    missing = [str(f) for f in args.run_metrics if not f.is_file()]
    if missing:
        raise MissingInput(f"{', '.join(missing)}: not found (run the stages before export)")
    run_metrics = {f.stem: json.loads(f.read_text()) for f in args.run_metrics}
    params = load_params(args.params)
    write_json(args.metrics, export(params, args.merged, args.out, read_split(args.heldout), run_metrics))


if __name__ == "__main__":
    stage.run(main)
