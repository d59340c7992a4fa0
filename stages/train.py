"""train: LoRA (QLoRA with load_in_4bit) on the Gen Z dataset with TRL's SFTTrainer.

    python stages/train.py --dataset data/generate/genz_dataset.jsonl --base models/prepare \
        --out models/train --live-dir dvclive/train --work-dir .cache/train --metrics metrics/train.json

Reads `train` from params.yaml, the dataset (split == train for training, validation for eval loss) and
the base model folder. Writes the LoRA adapter (+ tokenizer) to --out, DVCLive curves to --live-dir, and
loss, steps, tokens/s, peak memory, backend, device and wall time to --metrics. With train.num_processes
above 1 it runs itself again under `accelerate launch` (data parallel); rank 0 writes every output.
"""

from genz_speak import stage
from genz_speak.pipeline import train
from genz_speak.training import distributed

if __name__ == "__main__":
    stage.main(__doc__, "train", train.Paths, train.run, after=distributed.leave_group)
