"""Data-parallel planning: how train.num_processes splits an optimizer step, and the rank-agreement digest."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from genz_speak.config import TrainConfig
from genz_speak.errors import InputError
from genz_speak.training import distributed
from genz_speak.training.sft import plan_micro_batch


@pytest.mark.parametrize(
    ("batch", "accum", "micro", "processes", "expected"),
    [
        (2, 4, None, 1, (2, 4)),  # the recipe, one process
        (2, 4, None, 2, (2, 2)),  # two processes halve the accumulation
        (8, 1, None, 2, (4, 1)),  # ... or the micro-batch, when there is no accumulation to halve
        (2, 4, 1, 4, (1, 2)),
        (8, 2, "auto", 2, (8, 1)),  # no CUDA: auto keeps batch_size where it fits a process's share
        (4, 3, None, 2, (3, 2)),  # the largest micro-batch up to batch_size that divides a share of 6
    ],
)
def test_micro_batch_times_accumulation_times_processes_is_the_step(
    batch: int, accum: int, micro: int | str | None, processes: int, expected: tuple[int, int]
) -> None:
    cfg = replace(TrainConfig(), batch_size=batch, gradient_accumulation_steps=accum, micro_batch=micro)
    got = plan_micro_batch(cfg, None, processes)
    assert got == expected
    assert got[0] * got[1] * processes == batch * accum


def test_uneven_splits_name_the_key() -> None:
    with pytest.raises(InputError, match=r"train.num_processes: 3 processes cannot split the 8 rows"):
        distributed.rows_per_process(TrainConfig(), 3)
    cfg = replace(TrainConfig(), batch_size=2, gradient_accumulation_steps=4, micro_batch=4)
    with pytest.raises(InputError, match=r"train.micro_batch: 4 does not divide the 2 rows"):
        plan_micro_batch(cfg, None, 4)


def test_num_processes_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.num_processes(replace(TrainConfig(), num_processes="auto")) == (
        max(torch.cuda.device_count(), 1)
    )
    if not torch.cuda.is_available():  # on CPU any count runs (gloo); on CUDA one process per GPU
        assert distributed.num_processes(replace(TrainConfig(), num_processes=2)) == 2
    monkeypatch.setenv("WORLD_SIZE", "4")  # inside a launched group (e.g. multi-node) its size wins
    assert distributed.num_processes(TrainConfig()) == 4


def test_adapter_digest_sees_trainable_weights_only() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    before = distributed.adapter_digest(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # frozen: not part of what ranks must agree on
    assert distributed.adapter_digest(model) == before
    with torch.no_grad():
        model[1].weight[0, 0] += 1e-6
    assert distributed.adapter_digest(model) != before
