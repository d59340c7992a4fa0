"""export: the merged model as GGUF files (checked against it), an Ollama Modelfile and a model card.

    python stages/export.py --merged models/merge --heldout data/prepare/heldout.jsonl --out models/export \
        --run-metrics metrics/prepare.json metrics/generate.json metrics/train.json metrics/merge.json \
        metrics/evaluate.json --metrics metrics/export.json

Reads `export` from params.yaml (and the other sections, for the model card). Writes to --out one GGUF
file per export.formats, each reloaded through transformers and compared with the merged model on the
first held-out prompts (max |logit difference|, tokenizer, chat template), a Modelfile over the
export.modelfile_from file, and README.md, the model card built from the --run-metrics files. Sizes and
checks go to --metrics; when a check fails the stage writes nothing.
"""

from genz_speak import stage
from genz_speak.pipeline import export

if __name__ == "__main__":
    stage.main(__doc__, "export", export.Paths, export.run)
