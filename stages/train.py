"""train: LoRA (QLoRA with load_in_4bit) on the Gen Z dataset with TRL's SFTTrainer.

    python stages/train.py --dataset data/generate/genz_dataset.jsonl --base models/prepare \
        --out models/train --live-dir dvclive/train --work-dir .cache/train --metrics metrics/train.json \
        --run-info metrics/run/train.json

Reads `train` from params.yaml, the dataset (split == train for training, validation for eval loss) and
the base model folder; checks train.lora.target_modules against the model first. Writes the LoRA adapter
(+ tokenizer) to --out, DVCLive curves to --live-dir (written beside it as <live-dir>.tmp and moved in
when training ends, so a failed run leaves the previous curves), loss, steps, backend and device to
--metrics, and tokens/s, peak memory, library versions and wall time to --run-info. With train.num_processes
above 1 it runs itself again under `accelerate launch` (data parallel); rank 0 writes every output.
"""

from genz_speak import stage
from genz_speak.pipeline import train
from genz_speak.training import distributed

if __name__ == "__main__":
    stage.main(__doc__, "train", train.Paths, train.run, after=distributed.leave_group)
