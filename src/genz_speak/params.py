"""Loading `params.yaml` into the config dataclasses (`genz_speak.config`): one line per bad key, naming
the file and the dotted key."""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from genz_speak.config import Params
from genz_speak.errors import InputError, MissingInput

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


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`, except that a key given twice in one mapping is an error, as it is to DVC: a
    stage started directly must not run with whichever value came last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then a key may override it
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, Hashable) and key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate the whole params file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: params file not found (run from the project root)")
    with path.open() as f:
        try:
            data = yaml.load(f, Loader=_UniqueKeyLoader)  # a SafeLoader
        except _DuplicateKey as err:
            message = f"{path}:{err.line}: duplicate key {err.key!r} (first on line {err.first})"
            raise InputError(message) from None
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML: {err}") from err
    if data is not None and not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return parse(Params, data, path)
