"""merge: the LoRA adapter merged onto the 16-bit base -> a deployable model folder, verified.

    python stages/merge.py --base models/prepare --adapter models/train --heldout data/prepare/heldout.jsonl \
        --out models/merge --metrics metrics/merge.json

Reads `merge` from params.yaml. Writes safetensors, tokenizer, chat template and generation config to
--out, and the max |logit difference| between the saved merged model and base + adapter (on the first
held-out prompts) to --metrics; fails, writing no model, when it exceeds merge.tolerance.
"""

from genz_speak import stage
from genz_speak.pipeline import merge

if __name__ == "__main__":
    stage.main(__doc__, "merge", merge.Paths, merge.run)
