"""The pipeline tests' repo: built and reproduced once per session (a template) and copied into each test,
as DVC's own test fixtures do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.pipeline.dvcrepo import build_tiny_repo


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    repo = tmp_path_factory.mktemp("template") / "repo"
    build_tiny_repo(repo, tiny_model)
    return repo


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "repo"
    shutil.copytree(template, dest, symlinks=True)
    return dest
