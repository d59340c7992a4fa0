import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from genz_speak.cache import AppendLog, read_jsonl_tolerant
from genz_speak.io import (
    atomic_open,
    read_jsonl,
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


def test_replace_dir_never_deletes_the_old_output_first(tmp_path: Path) -> None:
    """Issue 23, point 10: the old folder is renamed aside and removed only once the new one is in place;
    nothing is left beside it."""
    out, tmp = tmp_path / "model", tmp_path / "model.tmp"
    (out / "old.bin").parent.mkdir(parents=True)
    (out / "old.bin").write_text("old")
    tmp.mkdir()
    (tmp / "new.bin").write_text("new")
    replace_dir(tmp, out)
    assert [p.name for p in out.iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_temporary_outputs_are_ignored_by_git_and_dvc() -> None:
    """Issue 23, point 10: a killed merge left a 260 MB models/merge.tmp that `git add -A` committed, and
    a temporary file inside an output folder would change the folder's DVC hash."""
    root = Path(__file__).resolve().parents[2]
    for path in ("models/merge.tmp/model.safetensors", "dvclive/train.tmp/metrics.json", "x/.a.jsonl.1f.tmp"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0, path
    assert "*.tmp" in (root / ".dvcignore").read_text().splitlines()


def _in_a_mount(tmp_path: Path, size: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` (Python) with a fresh tmpfs of `size` mounted at tmp_path/mnt, in a user and mount
    namespace of its own (no root needed; skipped where the kernel does not allow it)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -rm is not allowed here (no user namespaces)")
    shell = f'mount -t tmpfs -o size={size} none "{mnt}" && exec "{sys.executable}" -c "$0"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell, script], capture_output=True, text=True, timeout=120
    )


MOUNT_SCRIPT = """
import os, sys
from pathlib import Path
from genz_speak.io import replace_dir
mnt, tmp = Path(sys.argv[1]), Path(sys.argv[2])
(mnt / "old.bin").write_bytes(b"old" * 1000)
tmp.mkdir()
(tmp / "new.bin").write_bytes(os.urandom(int(sys.argv[3])))
try:
    replace_dir(tmp, mnt)
except OSError as err:
    print("error", err.errno)
print(os.path.ismount(mnt), sorted(p.name for p in mnt.iterdir()), (mnt / "old.bin").is_file())
"""


@pytest.mark.parametrize(
    "new_bytes, expected", [(1000, "True ['new.bin'] False"), (3_000_000, "True ['old.bin'] True")]
)
def test_replace_dir_on_a_mount_point(tmp_path: Path, new_bytes: int, expected: str) -> None:
    """Issue 23, point 10: an output folder that is a mount point lost its previous model (rmtree, then an
    EBUSY traceback). Its contents are replaced inside it; when the new ones do not fit (a full disk), the
    old ones are put back."""
    script = MOUNT_SCRIPT.replace("sys.argv[1]", repr(str(tmp_path / "mnt")))
    script = script.replace("sys.argv[2]", repr(str(tmp_path / "new.tmp"))).replace(
        "sys.argv[3]", str(new_bytes)
    )
    proc = _in_a_mount(tmp_path, "2m", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == expected, proc.stdout
    if new_bytes > 2_000_000:
        assert proc.stdout.startswith(f"error {errno.ENOSPC}")


def _append_many(path: str, writer: int) -> None:
    # Each record opened, written and closed on its own: every open repairs the file first, the moment
    # a concurrent writer could be caught mid-record.
    for i in range(40):
        with AppendLog(Path(path)) as log:
            log.write({"writer": writer, "i": i, "pad": str(writer) * 150_000}, sync=False)


def test_concurrent_writers_never_tear_each_others_records(tmp_path: Path) -> None:
    """Issue 23, point 9: experiments that share a cache (`dvc queue start -j 2`) append to one log. The
    repair of a torn last line, and each record, happen under an exclusive lock, in one write each."""
    import multiprocessing

    path = tmp_path / "shared.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    records = list(read_jsonl_tolerant(path))
    assert sorted((r["writer"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(40)]
    assert all(r["pad"] == str(r["writer"]) * 150_000 for r in records)
