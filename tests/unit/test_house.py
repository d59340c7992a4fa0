"""How the code is laid out, held by tests: each stage's code deps in dvc.yaml are exactly the modules
its script imports, directly or through other project modules (module level or inside functions: either
runs when the stage does), so a library edit reruns the stages that run it and no others. Imports under
`if TYPE_CHECKING:` never run and do not count; a package's `__init__.py` counts when it holds code (a
docstring-only one cannot change a result). Modules and functions stay small; the CLI stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = "genz_speak"


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """The project modules a file imports (package parents included: importing a.b runs a first)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for n in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports the module pkg.mod where there is one.
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            for i in range(1, len(parts) + 1):
                if _module_file(".".join(parts[:i])) is not None:
                    found.add(".".join(parts[:i]))
    return found


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def reach(script: Path) -> set[str]:
    """The project files (relative to the repo root) that running `script` can execute."""
    todo, seen = set(_imports(script)), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo |= _imports(_module_file(name))  # type: ignore[arg-type]
    files = {_module_file(n) for n in seen}
    return {
        str(f.relative_to(ROOT)) for f in files if f is not None and (f.name != "__init__.py" or _has_code(f))
    }


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(STAGES))
def test_code_deps_are_what_the_stage_imports(name: str) -> None:
    script = f"stages/{name}.py"
    listed = {d for d in STAGES[name]["deps"] if d.endswith(".py") or d.startswith("src/")}
    wanted = reach(ROOT / script) | {script}
    assert listed == wanted, (
        f"dvc.yaml {name}: missing {sorted(wanted - listed)}, extra {sorted(listed - wanted)}"
    )


def test_export_reaches_no_judge_and_few_modules() -> None:
    """The export stage (GGUF files and the model card) runs none of the judges' code: a judge refactor
    must not rerun the export."""
    files = reach(ROOT / "stages/export.py")
    assert not [f for f in files if "/judges/" in f], sorted(files)
    assert len(files) <= 15, sorted(files)


def _sources() -> list[Path]:
    return sorted([*(SRC / PACKAGE).rglob("*.py"), *(ROOT / "stages").glob("*.py")])


def test_no_module_over_400_lines_no_function_over_80() -> None:
    long_files = [
        (str(f.relative_to(ROOT)), n) for f in _sources() if (n := len(f.read_text().splitlines())) > 400
    ]
    long_functions = []
    for f in _sources():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > 80:
                    long_functions.append((f"{f.relative_to(ROOT)}:{node.name}", n))
    assert not long_files and not long_functions, (long_files, long_functions)


def test_a_light_command_imports_nothing_heavy() -> None:
    """`genz-speak profile --help` needs argparse, not torch, pydantic or the test server's fastapi."""
    code = (
        "import sys; from genz_speak import cli\n"
        "try: cli.main(['profile', '--help'])\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'pydantic', 'fastapi', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: genz-speak profile" in out and out.strip().endswith("[]"), out
