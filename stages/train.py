"""train: LoRA (QLoRA with load_in_4bit) on the Gen Z dataset with TRL's SFTTrainer.

    python stages/train.py --dataset data/generate/genz_dataset.jsonl --base models/prepare \
        --out models/train --live-dir dvclive/train --metrics metrics/train.json --work-dir .cache/train

Reads `train` from params.yaml, the dataset (split == train for training, validation for eval loss) and
the base model folder. Writes the LoRA adapter (+ tokenizer) to --out, DVCLive curves to --live-dir, and
loss, steps, tokens/s, peak memory, backend, device and wall time to --metrics. With train.num_processes
above 1 it runs itself again under `accelerate launch` (data parallel); rank 0 writes every output.
"""

import shutil
import sys
from pathlib import Path

from genz_speak import stage
from genz_speak.data.dataset import read_dataset
from genz_speak.io import replace_dir, write_json
from genz_speak.training import distributed
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
    rows = read_dataset(args.dataset)  # bad data stops the stage here, before any process is launched
    processes = distributed.num_processes(cfg)
    if processes > 1 and distributed.world_size() == 1:
        distributed.rows_per_process(cfg, processes)  # an uneven split is a params error, said once
        sys.exit(distributed.relaunch(processes))
    if processes == 1:
        distributed.use_one_gpu()

    tmp = args.out.with_name(args.out.name + ".tmp")
    if distributed.is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    metrics = train(cfg, rows, args.base, tmp, args.live_dir, args.work_dir)
    if metrics is not None:  # data-parallel ranks other than 0 write nothing
        replace_dir(tmp, args.out)  # the adapter appears only once complete
        shutil.rmtree(args.work_dir, ignore_errors=True)  # checkpoints only serve an unfinished run
        write_json(args.metrics, metrics)
    if distributed.world_size() > 1:
        distributed.exit_group_process()


if __name__ == "__main__":
    stage.run(main)
