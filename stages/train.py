"""train: LoRA (QLoRA with load_in_4bit) on the Gen Z dataset with TRL's SFTTrainer.

    python stages/train.py --dataset data/generate/genz_dataset.jsonl --base models/prepare \
        --out models/train --live-dir dvclive/train --metrics metrics/train.json --work-dir .cache/train

Reads `train` from params.yaml, the dataset (split == train for training, validation for eval loss) and
the base model folder. Writes the LoRA adapter (+ tokenizer) to --out, DVCLive curves to --live-dir, and
loss, steps, tokens/s, peak memory, backend, device and wall time to --metrics.
"""

import shutil
from pathlib import Path

from genz_speak import stage
from genz_speak.data.dataset import read_dataset
from genz_speak.io import write_json
from genz_speak.training.sft import train


def main() -> None:
    p = stage.parser(__doc__)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--live-dir", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, required=True, help="checkpoints (kept for train.resume)")
    args = p.parse_args()
    cfg = stage.start("train", args)

    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    metrics = train(cfg, read_dataset(args.dataset), args.base, tmp, args.live_dir, args.work_dir)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)  # the adapter appears only once complete
    shutil.rmtree(args.work_dir, ignore_errors=True)  # checkpoints only serve an unfinished run
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    stage.run(main)
