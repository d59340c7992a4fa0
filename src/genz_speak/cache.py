"""The caches every checkout and experiment share (teacher rewrites, judge verdicts, answers, the offline
judge's models): where they live, and the append-only logs they are written as, which several processes
may write at once and a killed one may leave with a torn last line."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genz_speak.errors import InputError
from genz_speak.io import clean


def cache_root() -> Path:
    """The caches every checkout and experiment share (teacher rewrites, judge verdicts, answers, the
    offline judge's models), content-addressed so that any of them may reuse any record: $GENZ_SPEAK_CACHE,
    else $XDG_CACHE_HOME/genz-speak, else ~/.cache/genz-speak (as datasets and huggingface_hub keep theirs).
    Outside the workspace, so `dvc exp run --queue`'s temporary workspaces use and fill it too."""
    override = os.environ.get("GENZ_SPEAK_CACHE")
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genz-speak"


def read_jsonl_tolerant(path: Path) -> Iterator[dict[str, Any]]:
    """Read an append-only log that a killed process may have left with a torn last line (cut anywhere,
    even inside a multi-byte character)."""
    if not path.is_file():
        return
    lines = path.read_bytes().splitlines(keepends=True)
    for lineno, line in enumerate(lines, start=1):
        try:
            yield clean(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if lineno == len(lines) and not line.endswith(b"\n"):  # the write a kill interrupted
                return
            raise InputError(f"{path}:{lineno}: corrupt line in the middle of an append log") from None


class AppendLog:
    """An append-only JSONL file that several processes (parallel experiments sharing a cache) and threads
    may write at once. Each record is one os.write on an O_APPEND descriptor under an exclusive flock, so
    records never interleave; a torn last line that a killed writer left is cut off, under the same lock,
    before the next record goes in. `sync` records are fsynced (a power cut loses at most the last one);
    the others reach the kernel, which is enough to survive the process being killed."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        self._threads = threading.Lock()  # flock orders processes; threads of one process share the fd
        with self._locked():
            self._repair()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._threads:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _repair(self) -> int:
        """Cut a torn last line (a kill mid-write); the file's size after."""
        info = os.fstat(self._fd)
        size = info.st_size
        if not stat.S_ISREG(info.st_mode) or size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return size
        end = size
        while end > 0:
            start = max(0, end - 65536)
            chunk = os.pread(self._fd, end - start, start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                os.ftruncate(self._fd, start + cut + 1)
                return start + cut + 1
            end = start
        os.ftruncate(self._fd, 0)
        return 0

    def write(self, record: dict[str, Any], sync: bool = True) -> None:
        data = (json.dumps(clean(record), ensure_ascii=False) + "\n").encode("utf-8")
        with self._locked():
            size = self._repair()
            try:
                written = os.write(self._fd, data)
            except OSError as err:  # name the file: a full disk is reported with it
                raise OSError(err.errno, err.strerror, str(self.path)) from err
            if written != len(data):  # the disk filled mid-record: leave no torn line for others
                os.ftruncate(self._fd, size)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            if sync:
                os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
