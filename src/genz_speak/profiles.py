"""`genz-speak profile NAME`: apply a profile (configs/NAME.yaml: only the keys it changes) to params.yaml.

    genz-speak profile --list                 # the profiles and what each is for
    genz-speak profile gpu-embedded           # params.yaml gets the profile's keys; then `dvc repro`
    genz-speak profile gpu-recipe --dry-run   # show what would change

A profile holds only what differs from params.yaml, so a key added to or renamed in params.yaml cannot
silently drift in a copy: a profile key that params.yaml does not have is an error, and the result is
validated like any params file. params.yaml keeps its comments and key order (ruamel.yaml round trip).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from genz_speak.errors import InputError

PROFILES_DIR = Path("configs")


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: comments, order and quoting survive
    yaml.width = 4096  # never re-wrap long values (prompts)
    yaml.preserve_quotes = True
    # ruamel writes None as nothing; params.yaml spells it null
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def profile_path(name: str, directory: Path = PROFILES_DIR) -> Path:
    path = Path(name) if name.endswith((".yaml", ".yml")) else directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml"))) or "none"
        raise InputError(f"{path}: no such profile (profiles in {directory}/: {known})")
    return path


def _merge(target: Any, changes: Any, source: Path, prefix: str, changed: list[tuple[str, Any, Any]]) -> None:
    for key, value in changes.items():
        dotted = f"{prefix}{key}"
        if key not in target:
            raise InputError(
                f"{source}: {dotted}: params.yaml has no such key (renamed or removed? fix the profile)"
            )
        if isinstance(value, dict):
            if not isinstance(target[key], dict):
                raise InputError(f"{source}: {dotted}: params.yaml holds a value here, not a section")
            _merge(target[key], value, source, f"{dotted}.", changed)
        elif target[key] != value:
            changed.append((dotted, target[key], value))
            target[key] = value


def apply(profile: Path, params: Path) -> tuple[str, list[tuple[str, Any, Any]]]:
    """params.yaml's text with `profile` applied, and the keys it changed as (key, old, new)."""
    from genz_speak.config import Params
    from genz_speak.params import parse

    yaml = _yaml()
    changes = yaml.load(profile.read_text(encoding="utf-8")) or {}
    if not isinstance(changes, dict):
        raise InputError(f"{profile}: a profile is a mapping of params.yaml sections")
    doc = yaml.load(params.read_text(encoding="utf-8"))
    changed: list[tuple[str, Any, Any]] = []
    _merge(doc, changes, profile, "", changed)
    out = io.StringIO()
    yaml.dump(doc, out)
    text = out.getvalue()
    from ruamel.yaml import YAML

    # Validated as the stages and DVC read it (YAML 1.2).
    parse(Params, YAML(typ="safe").load(text), Path(f"{params} (with {profile})"))
    return text, changed


def description(profile: Path) -> str:
    """A profile's first comment line: what it is for."""
    for line in profile.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a profile in configs/ (gpu-embedded, ...) or a YAML file's path")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    p.add_argument("--list", action="store_true", help="list the profiles in configs/")


def run(args: argparse.Namespace) -> None:
    from genz_speak.io import atomic_open

    try:
        if args.list or not args.name:
            for path in sorted(PROFILES_DIR.glob("*.yaml")):
                print(f"{path.stem:16} {description(path)}")
            return
        profile = profile_path(args.name)
        text, changed = apply(profile, args.params)
    except InputError as err:
        print(f"genz-speak profile: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for key, old, new in changed:
        print(f"{key}: {old!r} -> {new!r}")
    if args.dry_run:
        print(f"({len(changed)} keys would change; nothing written)")
        return
    with atomic_open(args.params) as f:
        f.write(text)
    print(f"{args.params}: {len(changed)} keys changed by {profile}")
