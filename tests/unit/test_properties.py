"""Property-based tests (hypothesis): the JSONL reader/writer, the append log, and config validation."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genz_speak.cache import AppendLog, read_jsonl_tolerant
from genz_speak.config import Params, TrainConfig
from genz_speak.errors import InputError
from genz_speak.io import clean, read_jsonl, write_jsonl
from genz_speak.params import parse

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)
rows_strategy = st.lists(st.dictionaries(st.text(), json_values, max_size=5), max_size=8)


@settings(max_examples=150, deadline=None)
@given(rows=rows_strategy)
def test_jsonl_round_trip(rows: list[dict[str, Any]]) -> None:
    """Whatever the text (newlines, U+2028, quotes, emoji), write then read gives the rows back, less the
    control characters (NUL and the like) that `io.clean` drops wherever text enters or leaves."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        assert write_jsonl(path, rows) == len(rows)
        assert read_jsonl(path) == clean(rows)


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(st.dictionaries(st.text(), json_values, min_size=1, max_size=4), min_size=1, max_size=6),
    cut=st.integers(min_value=1),
)
def test_append_log_survives_a_torn_last_line(rows: list[dict[str, Any]], cut: int) -> None:
    """A kill mid-write leaves a prefix of the last record: every earlier record reads back, and the next
    writer continues on a line of its own."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log.jsonl"
        with AppendLog(path) as log:
            for r in rows:
                log.write(r)
        data = path.read_bytes()
        last_start = data.rstrip(b"\n").rfind(b"\n") + 1
        torn = data[: last_start + cut % max(len(data) - 1 - last_start, 1)]
        path.write_bytes(torn)
        assert list(read_jsonl_tolerant(path))[: len(rows) - 1] == clean(rows[:-1])
        with AppendLog(path) as log:
            log.write({"resumed": True})
        assert list(read_jsonl_tolerant(path)) == [*clean(rows[:-1]), {"resumed": True}]


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


@settings(max_examples=100, deadline=None)
@given(
    key=st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True).filter(lambda k: k not in FIELDS),
    value=json_values,
)
def test_any_unknown_train_key_is_rejected_by_name(key: str, value: Any) -> None:
    with pytest.raises(InputError, match=rf"params.yaml: train\.{key}: unknown key"):
        parse(Params, {"train": {key: value}})


@settings(max_examples=100, deadline=None)
@given(lr=st.floats(min_value=0.0, max_value=5.0, allow_nan=False))
def test_learning_rate_range(lr: float) -> None:
    if 0.0 < lr < 1.0:
        assert parse(Params, {"train": {"learning_rate": lr}}).train.learning_rate == lr
    else:
        with pytest.raises(InputError, match=r"train\.learning_rate"):
            parse(Params, {"train": {"learning_rate": lr}})


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 16), accum=st.integers(1, 8), micro=st.integers(1, 32))
def test_micro_batch_must_divide_the_effective_batch(batch: int, accum: int, micro: int) -> None:
    train = {"batch_size": batch, "gradient_accumulation_steps": accum, "micro_batch": micro}
    if (batch * accum) % micro == 0:
        assert parse(Params, {"train": train}).train.micro_batch == micro
    else:
        with pytest.raises(InputError, match="must divide"):
            parse(Params, {"train": train})
