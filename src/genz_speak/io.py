"""File I/O shared by the stages: JSONL with line-numbered errors, atomic writes, append-and-flush logs."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from genz_speak.errors import InputError, MissingInput


@dataclass
class SkipBudget:
    """Bad rows a reader may skip: each is recorded; one over `limit` fails the read."""

    limit: int = 0
    skipped: list[str] = field(default_factory=list)

    def absorb(self, err: InputError) -> None:
        if len(self.skipped) >= self.limit:
            raise err
        self.skipped.append(str(err))


MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any real row; a larger line is a corrupt or wrong file


def read_jsonl(
    path: str | Path,
    *,
    allow_empty: bool = True,
    unique: str | None = None,
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    budget: SkipBudget | None = None,
) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; any problem fails with the file and line number.

    Blank lines are skipped. `allow_empty=False` rejects a file without rows; `unique` names a field whose
    values must not repeat (the error names both lines). `check` validates (and may normalise) each row,
    raising InputError; its message gets the file and line. With a `budget`, bad lines within its limit are
    skipped and recorded there.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: file not found")
    rows = []
    seen: dict[Any, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                row = _parse_line(path, lineno, raw)
                if row is not None and check is not None:
                    try:
                        row = check(row)
                    except InputError as err:
                        raise InputError(f"{path}:{lineno}: {err}") from None
            except InputError as err:
                (budget or SkipBudget()).absorb(err)
                continue
            if row is None:
                continue
            if unique is not None:
                key = row.get(unique)
                if key in seen:
                    raise InputError(
                        f"{path}:{lineno}: duplicate {unique} {key!r} (first on line {seen[key]})"
                    )
                seen[key] = lineno
            rows.append(row)
    if not rows and not allow_empty:
        raise InputError(f"{path}: no rows (the file is empty)")
    return rows


def _parse_line(path: Path, lineno: int, raw: bytes) -> dict[str, Any] | None:
    """One JSONL line as an object (None for a blank line), or an InputError naming the line."""
    if len(raw) > MAX_LINE_BYTES:
        raise InputError(
            f"{path}:{lineno}: line of {len(raw) / 2**20:.1f} MiB is over the {MAX_LINE_BYTES >> 20} MiB "
            "limit (a corrupt or wrong file?)"
        )
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}:{lineno}: not UTF-8 (byte {err.start}: {err.reason})") from None
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{lineno}: not valid JSON: {err.msg}") from None
    if not isinstance(row, dict):
        raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def read_jsonl_tolerant(path: Path) -> Iterator[dict[str, Any]]:
    """Read an append-only log that a killed process may have left with a torn last line (cut anywhere,
    even inside a multi-byte character)."""
    if not path.is_file():
        return
    lines = path.read_bytes().splitlines(keepends=True)
    for lineno, line in enumerate(lines, start=1):
        try:
            yield json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if lineno == len(lines) and not line.endswith(b"\n"):  # the write a kill interrupted
                return
            raise InputError(f"{path}:{lineno}: corrupt line in the middle of an append log") from None


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file beside `path`, created as any other file is (mode 0666 less the umask): mkstemp's 0600
    would make every output unreadable to the rest of a team sharing a checkout, a cache or a remote."""
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` into place as `out`, replacing it; its files first get the mode a
    new file gets here (some writers, safetensors among them, create theirs 0600)."""
    fd, probe = _create_temporary(tmp / "mode")
    os.close(fd)
    mode = stat.S_IMODE(os.stat(probe).st_mode)
    os.unlink(probe)
    for p in tmp.rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.chmod(mode)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A fresh temporary folder beside `out` for the block to write into: moved into place as `out` when
    the block succeeds, removed when it fails (so `out` only ever holds a complete output)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, data: Any) -> None:
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


class AppendLog:
    """An append-only JSONL file flushed after every record, so a killed run loses at most one line."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair(path)
        self.path = path
        self._f = path.open("a", encoding="utf-8")

    @staticmethod
    def _repair(path: Path) -> None:
        # Drop a torn last line left by a kill, so that new records start on a line of their own.
        if not path.is_file() or path.stat().st_size == 0:
            return
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: local servers and the data-parallel rendezvous bind to it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
