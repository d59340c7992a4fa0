"""Profiles (configs/*.yaml) hold only the keys they change and apply to params.yaml with one command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genz_speak.errors import InputError
from genz_speak.params import load_params
from genz_speak.profiles import apply
from tests.conftest import ROOT

PROFILES = sorted((ROOT / "configs").glob("*.yaml"))


def _leaves(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in data.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def test_the_shipped_profiles() -> None:
    assert {p.stem for p in PROFILES} == {"gpu-embedded", "gpu-recipe", "original", "qwen", "llama3"}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_profile_applies_cleanly_and_changes_only_its_keys(profile: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    text, changed = apply(profile, params)
    params.write_text(text)
    load_params(params)  # the result is a valid params file
    wanted = _leaves(yaml.safe_load(profile.read_text()))
    result, base = _leaves(yaml.safe_load(text)), _leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert set(result) == set(base)  # no key added or lost
    assert {k: result[k] for k in wanted} == wanted
    assert {k for k in base if result[k] != base[k]} == {k for k, _, _ in changed} <= set(wanted)
    # comments and layout of every line the profile does not change survive the round trip
    before, after = (ROOT / "params.yaml").read_text().splitlines(), text.splitlines()
    assert len(before) == len(after)
    differing = [b for b, a in zip(before, after, strict=True) if b != a]
    assert len(differing) == len(changed)


def test_the_original_setup_profile() -> None:
    text, _ = apply(ROOT / "configs/original.yaml", ROOT / "params.yaml")
    p = yaml.safe_load(text)
    assert p["prepare"]["source"]["kind"] == "hub"
    assert p["prepare"]["source"]["dataset"] == "databricks/databricks-dolly-15k"
    assert (p["generate"]["teacher"], p["generate"]["model"]) == ("vllm", "Qwen/Qwen3-VL-30B-A3B-Instruct")
    assert p["prepare"]["base_model"] == "unsloth/tinyllama"
    assert (p["evaluate"]["judge"], p["evaluate"]["llm"]["model"]) == ("both", "gpt-5-mini")


def test_a_key_params_yaml_lacks_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lerning_rate: 0.1\n")
    with pytest.raises(InputError, match=r"bad.yaml: train.lerning_rate: params.yaml has no such key"):
        apply(bad, ROOT / "params.yaml")
    bad.write_text("train:\n  learning_rate: 7\n")  # out of range: the result is validated
    with pytest.raises(InputError, match=r"train.learning_rate"):
        apply(bad, ROOT / "params.yaml")


def test_the_command_writes_params_and_dry_run_does_not(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "genz_speak.cli", "profile", *args, "--params", str(params)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)

    dry = cli("gpu-embedded", "--dry-run")
    assert dry.returncode == 0 and "train.load_in_4bit: False -> True" in dry.stdout
    assert params.read_text() == (ROOT / "params.yaml").read_text()
    assert cli("gpu-embedded").returncode == 0
    assert load_params(params).train.load_in_4bit
    missing = cli("no-such-profile")
    assert missing.returncode == 2 and "no such profile" in missing.stderr


@pytest.mark.parametrize(
    ("profile", "base_model", "pre", "license"),
    [
        ("qwen", "Qwen/Qwen2.5-0.5B-Instruct", "qwen2", "apache-2.0"),
        ("llama3", "meta-llama/Llama-3.2-1B-Instruct", "llama-bpe", "llama3.2"),
    ],
)
def test_the_student_profiles(profile: str, base_model: str, pre: str, license: str, tmp_path: Path) -> None:
    """The Qwen and Llama 3 students: a hub id, the licence the card and GGUF declare, and a fallback
    pre-tokenizer name that llama.cpp's installed converter itself assigns (so llama.cpp knows it)."""
    from genz_speak.export.converter import CONVERTER_DIR

    params = tmp_path / "params.yaml"
    params.write_text(apply(ROOT / f"configs/{profile}.yaml", ROOT / "params.yaml")[0])
    p = load_params(params)
    assert (p.prepare.base_model, p.prepare.chat_template) == (base_model, "auto")  # their own template
    assert (p.export.tokenizer_pre, p.export.license, p.export.formats) == (pre, license, ("f16", "q8_0"))
    source = (CONVERTER_DIR / "conversion/base.py").read_text()
    assert f'res = "{pre}"' in source


def test_the_gpu_recipe_gives_its_base_model_a_template_and_exports_gguf() -> None:
    for profile in ("gpu-recipe", "original"):
        text, _ = apply(ROOT / f"configs/{profile}.yaml", ROOT / "params.yaml")
        p = yaml.safe_load(text)
        assert p["prepare"]["base_model"] == "unsloth/tinyllama" and p["prepare"]["chat_template"] == "auto"
        assert p["export"]["formats"] == ["f16", "q8_0"], profile
