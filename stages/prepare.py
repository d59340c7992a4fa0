"""prepare: source questions -> train / validation / held-out splits, and the base model as a folder.

    python stages/prepare.py --data-dir data/prepare --model-dir models/prepare --metrics metrics/prepare.json

Reads `prepare` from params.yaml and the source it names (default: data/questions.jsonl, shipped with the
project). Writes {train,validation,heldout}.jsonl under --data-dir, the base model (safetensors, tokenizer,
chat template) under --model-dir, and row counts to --metrics.
"""

from genz_speak import stage
from genz_speak.pipeline import prepare

if __name__ == "__main__":
    stage.main(__doc__, "prepare", prepare.Paths, prepare.run)
