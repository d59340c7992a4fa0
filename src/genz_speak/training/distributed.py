"""Data-parallel training across the processes of one host (or several): launched by `accelerate launch`.

The train stage resolves `train.num_processes`; above 1 it starts itself again under `accelerate launch
--multi_gpu` (torch.distributed underneath: one process per GPU, NCCL on CUDA, gloo on CPU), and the
Trainer wraps the model in DistributedDataParallel. A stage already started by a launcher (WORLD_SIZE set:
`accelerate launch`, `torchrun`, a multi-node accelerate config) is not launched again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from typing import Any, NoReturn

from genz_speak.config import TrainConfig
from genz_speak.errors import ParamError
from genz_speak.io import free_port

log = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 alone writes outputs, metrics and curves."""
    return rank() == 0


def num_processes(cfg: TrainConfig) -> int:
    """`train.num_processes` resolved: auto is every visible GPU (1 without CUDA). Inside a launched
    group the group's size wins, so a multi-node launch is not second-guessed."""
    import torch

    if world_size() > 1:
        return world_size()
    gpus = torch.cuda.device_count()  # 0 without CUDA
    if cfg.num_processes == "auto":
        return max(gpus, 1)
    if gpus and cfg.num_processes > gpus:
        raise ParamError(
            "train.num_processes",
            f"{cfg.num_processes} processes, but {gpus} GPU(s) are visible "
            "(one process per GPU); use auto or at most the GPU count",
        )
    return cfg.num_processes


def use_one_gpu() -> None:
    """One process on a host with several GPUs: keep it to the first. Seeing them all, the Trainer would
    wrap the model in nn.DataParallel, which SFTTrainer refuses. Must run before CUDA is initialised."""
    import torch

    if world_size() == 1 and torch.cuda.device_count() > 1:
        first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        log.info("train: 1 process, %d GPUs visible: training on GPU %s", torch.cuda.device_count(), first)
        os.environ["CUDA_VISIBLE_DEVICES"] = first


def rows_per_process(cfg: TrainConfig, processes: int) -> int:
    """Rows each process contributes to an optimizer step: the effective batch split evenly."""
    effective = cfg.batch_size * cfg.gradient_accumulation_steps
    if effective % processes:
        raise ParamError(
            "train.num_processes",
            f"{processes} processes cannot split the {effective} rows of "
            f"an optimizer step (train.batch_size {cfg.batch_size} x train.gradient_accumulation_steps "
            f"{cfg.gradient_accumulation_steps}) evenly; make that product a multiple of {processes}",
        )
    return effective // processes


def relaunch(processes: int) -> int:
    """Run this very script again as `processes` data-parallel processes; their exit status.

    `--multi_gpu` makes accelerate start the group through torch.distributed.run on any device (the
    processes pick NCCL on CUDA and gloo on CPU); every other launcher setting is passed explicitly, so
    no local `accelerate config` file changes what the stage runs.
    """
    port = free_port()  # two stages on one host must not share accelerate's default rendezvous port
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
        *sys.argv,
    ]  # fmt: skip
    log.info("train: %d data-parallel processes: %s", processes, " ".join(cmd))
    launcher = subprocess.Popen(cmd)
    try:
        return launcher.wait()
    finally:
        if launcher.poll() is None:  # this stage was stopped (SIGTERM, Ctrl-C): stop the group too
            launcher.terminate()  # the launcher passes SIGTERM on to every process of the group
            launcher.wait()


def adapter_digest(model: Any) -> str:
    """SHA-256 of the trainable (LoRA) tensors, by name: equal on every rank when DDP kept them in step."""
    h = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _group() -> Any:
    """torch.distributed while a process group is up, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def gather(value: Any) -> list[Any]:
    """`value` from every rank, in rank order (just [value] outside a process group)."""
    dist = _group()
    if dist is None:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    dist = _group()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish() -> None:
    """Leave the process group once no collective is left: the ranks leave it together."""
    dist = _group()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


def exit_group_process() -> NoReturn:
    """End a process of a launched group, its work done and written, without interpreter teardown.

    At teardown the DDP reducer's last reference to the gloo group goes, and the group's destructor joins
    its worker threads while holding the GIL; a worker still releasing the last collective's tensors
    needs the GIL too, and the process hangs (seen on CPU: rank 1 after rank 0 had written everything,
    even with finish()'s barrier). Nothing is left to run at that point but that teardown.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def leave_group() -> None:
    """After the stage's outputs are written: a process of a launched group ends without interpreter
    teardown (see `exit_group_process`); a lone process returns."""
    if world_size() > 1:
        exit_group_process()
