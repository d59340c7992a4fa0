"""`genz-speak push` as far as this machine's network allows: the file list, the card, a clear error
without a token, and a clear error (with the token kept out of it) when the Hub cannot be reached."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from genz_speak.config import Params
from genz_speak.errors import MissingInput
from genz_speak.export import card
from genz_speak.export.hub import upload_plan
from genz_speak.io import free_port
from genz_speak.params import parse
from tests.conftest import python_env


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    merged, export = tmp_path / "merge", tmp_path / "export"
    merged.mkdir()
    export.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        (merged / name).write_text("{}")
    (export / "genz-speak-q8_0.gguf").write_bytes(b"GGUF")
    (export / "Modelfile").write_text("FROM ./genz-speak-q8_0.gguf\n")
    card.model_card(parse(Params, {}), "genz-speak", {"generate": {"rows": 5, "rejected": 1}}, {}).save(
        export / "README.md"
    )
    return merged, export


def test_upload_plan(folders: tuple[Path, Path]) -> None:
    merged, export = folders
    plan = upload_plan(merged, export, gguf=False)
    assert sorted(plan) == [
        "README.md",
        "chat_template.jinja",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert plan["README.md"] == export / "README.md"
    with_gguf = upload_plan(merged, export, gguf=True)
    assert set(with_gguf) - set(plan) == {"genz-speak-q8_0.gguf", "Modelfile"}
    (export / "README.md").unlink()
    with pytest.raises(MissingInput, match="dvc repro export"):
        upload_plan(merged, export, gguf=False)


def _push(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in python_env().items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    return subprocess.run(
        [sys.executable, "-m", "genz_speak.cli", "push", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **env},
    )


def test_dry_run_lists_the_files_and_prints_the_card(folders: tuple[Path, Path]) -> None:
    merged, export = folders
    proc = _push("you/genz-speak", "--merged", str(merged), "--export", str(export), "--gguf", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if " MB " in line]
    assert sorted(listed) == sorted(
        [*(p.name for p in merged.iterdir()), "README.md", "Modelfile", "genz-speak-q8_0.gguf"]
    )
    assert (
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in proc.stdout
        and "5 rows kept, 1 rejected" in proc.stdout
    )


def test_no_token_is_a_clear_error(folders: tuple[Path, Path]) -> None:
    merged, export = folders
    proc = _push("you/genz-speak", "--merged", str(merged), "--export", str(export))
    assert proc.returncode == 2
    assert "$HF_TOKEN is not set" in proc.stderr and "huggingface.co/settings/tokens" in proc.stderr


def test_bad_repo_id_is_a_clear_error(folders: tuple[Path, Path]) -> None:
    merged, export = folders
    proc = _push("not a repo id", "--merged", str(merged), "--export", str(export), HF_TOKEN="hf_x")
    assert proc.returncode == 2 and "repo" in proc.stderr.lower()


def test_an_unreachable_hub_is_a_clear_error_without_the_token(folders: tuple[Path, Path]) -> None:
    merged, export = folders
    secret = "hf_SECRETtoken0123456789"
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = _push(
        "you/genz-speak",
        "--merged",
        str(merged),
        "--export",
        str(export),
        HF_TOKEN=secret,
        HF_ENDPOINT=endpoint,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "could not reach the Hub" in proc.stderr
    assert secret not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
