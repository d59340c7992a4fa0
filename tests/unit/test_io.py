import json
import os
import stat
from pathlib import Path

import pytest

from genz_speak.io import (
    AppendLog,
    atomic_open,
    read_jsonl,
    read_jsonl_tolerant,
    replace_dir,
    write_json,
    write_jsonl,
)


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:3: not valid JSON"):
        read_jsonl(p)


def test_read_jsonl_rejects_non_objects(tmp_path: Path) -> None:
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: expected a JSON object"):
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


@pytest.mark.parametrize(
    "umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)], ids=["022", "002", "077"]
)
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Outputs get the mode any other file would (0644 under umask 022), so a team sharing a checkout,
    a DVC cache or a remote can read them; mkstemp alone makes every output 0600."""
    old = os.umask(umask)
    try:
        write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
        write_json(tmp_path / "m.json", {"a": 1})
        with atomic_open(tmp_path / "model.bin", "wb") as f:
            f.write(b"\0")
    finally:
        os.umask(old)
    for name in ("rows.jsonl", "m.json", "model.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_replace_dir_gives_files_the_umask_mode_and_replaces(tmp_path: Path) -> None:
    out, tmp = tmp_path / "model", tmp_path / "model.tmp"
    (out / "old").mkdir(parents=True)
    (tmp / "sub").mkdir(parents=True)
    for name in ("model.safetensors", "sub/config.json"):
        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors creates its files
        os.close(fd)
    old = os.umask(0o022)
    try:
        replace_dir(tmp, out)
    finally:
        os.umask(old)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "model.safetensors",
        "sub",
        "sub/config.json",
    ]
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o644}
    assert not tmp.exists()
