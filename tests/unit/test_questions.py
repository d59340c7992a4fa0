import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from genz_speak.config import PrepareConfig, SourceConfig
from genz_speak.data.dataset import DOLLY_CATEGORIES
from genz_speak.data.questions import load_source, split_rows

ROOT = Path(__file__).resolve().parents[2]


def cfg(**kw) -> PrepareConfig:
    return replace(PrepareConfig(source=SourceConfig(path=str(ROOT / "data/questions.jsonl"))), **kw)


def test_shipped_question_set_covers_dolly() -> None:
    rows = load_source(cfg())
    assert len(rows) >= 200
    counts = Counter(r["category"] for r in rows)
    assert set(counts) == DOLLY_CATEGORIES
    assert min(counts.values()) >= 20
    for r in rows:
        assert r["response"] and r["instruction"]
        if r["category"] in ("closed_qa", "information_extraction", "summarization"):
            assert r["context"], r["instruction"]
    assert len({r["id"] for r in rows}) == len(rows)


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    rows = load_source(cfg())
    a, b = split_rows(rows, cfg()), split_rows(list(reversed(rows)), cfg())
    assert [r["id"] for r in a.heldout] == [r["id"] for r in b.heldout]  # order of the source is irrelevant
    assert [r["id"] for r in a.train] == [r["id"] for r in b.train]
    ids = [{r["id"] for r in s} for s in (a.train, a.validation, a.heldout)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(a.heldout) == 10 and len(a.validation) == 20
    assert len({r["category"] for r in a.heldout}) == 8
    assert len(ids[0]) + 30 == len(rows)
    other = split_rows(rows, cfg(seed=7))
    assert {r["id"] for r in other.heldout} != ids[2]


def test_filters_and_cap() -> None:
    rows = load_source(cfg())
    s = split_rows(
        rows + rows[:3], cfg(categories=("open_qa", "general_qa"), max_train_rows=5, validation_size=4)
    )
    assert {r["category"] for r in s.train + s.validation + s.heldout} <= {"open_qa", "general_qa"}
    assert len(s.train) == 5
    dup = split_rows(rows + rows[:3], cfg())
    assert dup.dropped["duplicate"] == 3


def test_too_few_rows_is_explained() -> None:
    rows = load_source(cfg())[:15]
    with pytest.raises(ValueError, match="heldout_size"):
        split_rows(rows, cfg())


def test_bad_row_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    good = {"instruction": "Q?", "context": "", "response": "A.", "category": "open_qa"}
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "category": "poetry"}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:2: unknown category 'poetry'"):
        load_source(cfg(source=SourceConfig(path=str(p))))
    p.write_text(json.dumps({**good, "response": ""}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1: missing or empty field\(s\) \['response'\]"):
        load_source(cfg(source=SourceConfig(path=str(p))))


def test_parquet_source(tmp_path: Path) -> None:
    rows = load_source(cfg())
    p = tmp_path / "q.parquet"
    pd.DataFrame(
        [{k: r[k] for k in ("instruction", "context", "response", "category")} for r in rows]
    ).to_parquet(p)
    assert [r["id"] for r in load_source(cfg(source=SourceConfig(path=str(p))))] == [r["id"] for r in rows]


def test_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"prepare\.source\.path"):
        load_source(cfg(source=SourceConfig(path=str(tmp_path / "q.csv"))))


@pytest.mark.parametrize("blank", [" ", "\t\n", "\u00a0", "\u00a0 \u3000", "\u2003"])
@pytest.mark.parametrize("field", ["instruction", "response"])
def test_blank_fields_are_empty_at_the_source_line(tmp_path: Path, field: str, blank: str) -> None:
    """Whitespace (NBSP and other Unicode spaces included) is not an answer: the error names the source
    line, not prepare's output one stage later."""
    p = tmp_path / "q.jsonl"
    good = {"instruction": "Q?", "context": "", "response": "A.", "category": "open_qa"}
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, field: blank}) + "\n")
    with pytest.raises(ValueError, match=rf"q.jsonl:2: missing or empty field\(s\) \['{field}'\]"):
        load_source(cfg(source=SourceConfig(path=str(p))))
