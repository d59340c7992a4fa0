"""File I/O shared by the stages: JSONL with line-numbered errors, text cleaned where it is read (lone
surrogates, control characters) and a repeated field refused, atomic writes of files and folders
(`genz_speak.cache` has the shared caches' append logs)."""

from __future__ import annotations

import json
import os
import re
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
BOM = b"\xef\xbb\xbf"

# Lone UTF-16 surrogates (a JSON "\\ud83d" escape: an emoji cut in half) cannot be encoded as UTF-8, so the
# first write of such a string fails; NUL and the other control characters (but tab and newlines) are no
# part of any text a person or a model means, and break terminals, tokenizers and some JSON readers.
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """`text` safe to hash, write and show: lone surrogates become U+FFFD, control characters other than
    tab, newline and carriage return are dropped."""
    return _CONTROL.sub("", _SURROGATE.sub("\ufffd", text))


def clean(value: Any) -> Any:
    """`clean_text` applied to every string in a JSON value (keys included)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


class DuplicateField(ValueError):
    """A field given twice in one JSON object (json itself keeps the last value silently)."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a field given twice in one object is an error (json keeps the last silently)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateField(key)
        obj[key] = value
    return obj


def loads(text: str | bytes) -> Any:
    """json.loads that refuses a field given twice in one object (DuplicateField) and cleans every string."""
    return clean(json.loads(text, object_pairs_hook=_unique_object))


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
            if lineno == 1:
                raw = raw.removeprefix(BOM)  # editors on Windows write one; it is no part of the data
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
        row = loads(line)
    except DuplicateField as err:
        raise InputError(f"{path}:{lineno}: field {err.args[0]!r} given twice in one row") from None
    except json.JSONDecodeError as err:
        if lineno == 1 and line.lstrip().startswith("["):
            raise InputError(_ARRAY.format(path=path)) from None
        raise InputError(f"{path}:{lineno}: not valid JSON: {err.msg}") from None
    if isinstance(row, list) and lineno == 1:
        raise InputError(_ARRAY.format(path=path))
    if not isinstance(row, dict):
        raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


# A file that opens with "[" is a JSON array (one line or pretty-printed), the commonest wrong format.
_ARRAY = "{path}: expected JSONL (one object per line), got a JSON array; write one object per line"


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


def _give_new_file_mode(tmp: Path) -> None:
    """Give every file under `tmp` the mode a new file gets here (some writers, safetensors among them,
    create theirs 0600, unreadable to a team sharing a checkout, a cache or a remote)."""
    fd, probe = _create_temporary(tmp / "mode")
    os.close(fd)
    mode = stat.S_IMODE(os.stat(probe).st_mode)
    os.unlink(probe)
    for p in tmp.rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.chmod(mode)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` into place as `out`. The previous `out` is deleted only once the new
    one is in place: renamed aside, then removed (renamed back if the new one cannot move in). A mount
    point cannot be renamed or removed, so there the contents are replaced inside it (`_replace_inside`)."""
    _give_new_file_mode(tmp)
    if out.is_dir() and os.path.ismount(out):
        _replace_inside(tmp, out)
        return
    if not out.exists() and not out.is_symlink():
        os.replace(tmp, out)
        return
    old = _temporary_dir(out, "old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _replace_inside(tmp: Path, mount: Path) -> None:
    """The previous entries of `mount` go into a hidden folder inside it (a rename on its own filesystem),
    the new ones are copied in, then the old ones are deleted; any failure (a full disk, say) removes what
    was copied and puts the old entries back."""
    aside = mount / f".old-{secrets.token_hex(4)}.tmp"
    aside.mkdir()
    moved: list[str] = []
    try:
        for entry in list(mount.iterdir()):
            if entry != aside and entry.name != "lost+found":  # the filesystem's own, not an output
                os.replace(entry, aside / entry.name)
                moved.append(entry.name)
        for entry in list(tmp.iterdir()):
            shutil.move(str(entry), str(mount / entry.name))  # copies across filesystems
    except BaseException:
        for entry in list(mount.iterdir()):
            if entry != aside and entry.name != "lost+found" and entry.name not in moved:
                _remove(entry)
        for name in moved:
            if not (mount / name).exists():
                os.replace(aside / name, mount / name)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _temporary_dir(out: Path, kind: str) -> Path:
    """A name beside `out` that is this process's own (experiments sharing a cache may write the same
    folder at once), hidden and *.tmp (git- and DVC-ignored); leftovers of processes that are gone, which a
    kill leaves, are removed first."""
    for stale in out.parent.glob(f".{out.name}.*.tmp"):
        pid = stale.name[len(out.name) + 2 :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}.tmp")


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A fresh temporary folder beside `out` for the block to write into: moved into place as `out` when
    the block succeeds, removed when it fails (so `out` only ever holds a complete output)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_dir(out, "new")
    tmp.mkdir()
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
            f.write(json.dumps(clean(row), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, data: Any) -> None:
    with atomic_open(path) as f:
        json.dump(clean(data), f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: local servers and the data-parallel rendezvous bind to it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
