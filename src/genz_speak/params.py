"""Loading `params.yaml` into the config dataclasses (`genz_speak.config`): one line per bad key, naming
the file and the dotted key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from genz_speak.config import Params
from genz_speak.errors import InputError, MissingInput, ParamError

T = TypeVar("T")


_UNION_TAG = re.compile(r"^(int|float|str|bool|none|literal\[.*\]|constrained-.*|function-.*)$")


def _format_error(err: ValidationError, path: Path, prefix: str) -> str:
    """One line per bad key; a value that fits none of a union's choices (e.g. "auto" or a positive int)
    gets one line listing what each choice wanted, rather than one line per choice under pydantic's tags."""
    messages: dict[str, list[str]] = {}
    for e in err.errors():
        loc = [str(p) for p in (prefix, *e["loc"]) if p != ""]
        if e["type"] == "unexpected_keyword_argument":
            msg = "unknown key (check its spelling; see params.yaml's comments for the known keys)"
        else:
            loc = [p for p in loc if not _UNION_TAG.match(p)]
            msg = e["msg"].removeprefix("Value error, ")
        messages.setdefault(".".join(loc) or "<root>", []).append(msg)
    return "\n".join(f"{path}: {key}: {' or '.join(msgs)}" for key, msgs in messages.items())


def parse(cls: type[T], data: Any, path: Path = Path("params.yaml"), prefix: str = "") -> T:
    """Build a config dataclass from plain data; errors name the file and the dotted key."""
    try:
        return TypeAdapter(cls).validate_python(data if data is not None else {})
    except ValidationError as err:
        raise InputError(_format_error(err, path, prefix)) from None


_DUPLICATE = re.compile(r'found duplicate key "(?P<key>.*?)" with value')


def _read_yaml(path: Path) -> Any:
    """The file as DVC reads it: ruamel.yaml's safe loader, YAML 1.2 (`042` is 42, `yes` a string; PyYAML's
    YAML 1.1 reads them as 34 and True), so a stage runs with the values DVC hashed and compares. A key
    given twice in one mapping is an error, as it is to DVC."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import YAMLError

    text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    try:
        return YAML(typ="safe").load(text)
    except DuplicateKeyError as err:
        key = _DUPLICATE.search(str(err.problem))
        line, first = err.problem_mark.line + 1, err.context_mark.line + 1  # type: ignore[union-attr]
        name = key.group("key") if key else "?"
        raise InputError(f"{path}:{line}: duplicate key {name!r} (first on line {first})") from None
    except YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate the whole params file; errors found later (`ParamError`) name this file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: params file not found (run from the project root)")
    ParamError.file = str(path)
    data = _read_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return parse(Params, data, path)
