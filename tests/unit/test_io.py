import json
from pathlib import Path

import pytest

from genz_speak.io import AppendLog, atomic_open, read_jsonl, read_jsonl_tolerant, write_jsonl


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:3: not valid JSON"):
        read_jsonl(p)


def test_read_jsonl_rejects_non_objects(tmp_path: Path) -> None:
    p = tmp_path / "rows.jsonl"
    p.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:1: expected a JSON object"):
        read_jsonl(p)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    write_jsonl(p, [{"a": 1}])
    with pytest.raises(RuntimeError), atomic_open(p) as f:
        f.write("partial")
        raise RuntimeError("killed")
    assert read_jsonl(p) == [{"a": 1}]
    assert [x.name for x in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary left behind


def test_append_log_survives_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "cache.jsonl"
    with AppendLog(p) as log:
        log.write({"k": 1})
        log.write({"k": 2})
    with p.open("a") as f:
        f.write('{"k": 3, "trunc')  # a write the kill interrupted
    assert [r["k"] for r in read_jsonl_tolerant(p)] == [1, 2]
    with AppendLog(p) as log:
        log.write({"k": 4})
    assert [json.loads(line)["k"] for line in p.read_text().splitlines()] == [1, 2, 4]


def test_corruption_in_the_middle_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "cache.jsonl"
    p.write_text('{"k": 1}\nnot json\n{"k": 2}\n')
    with pytest.raises(ValueError, match=r"cache.jsonl:2"):
        list(read_jsonl_tolerant(p))
