import dataclasses
from pathlib import Path

import pytest
import yaml

from genz_speak.config import OPERATIONAL_KEYS, Params
from genz_speak.errors import InputError
from genz_speak.params import load_params, parse

ROOT = Path(__file__).resolve().parents[2]


def _fields(cls: type, prefix: str = "") -> set[str]:
    """Every dotted key of a config dataclass, nested sections included."""
    keys = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default):
            keys |= _fields(type(f.default), f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def _keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        keys |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


def test_params_yaml_parses_and_spells_out_every_key() -> None:
    """Every config field has its value in params.yaml: no default in config.py applies silently (so the
    stages' dvc.yaml params, not config.py, decide what reruns)."""
    assert isinstance(load_params(ROOT / "params.yaml"), Params)
    assert _keys(yaml.safe_load((ROOT / "params.yaml").read_text())) == _fields(Params)


def _stage_params(stage: dict) -> set[str]:
    """The dotted leaf keys a dvc.yaml stage depends on (a listed section stands for all its keys)."""
    every = _fields(Params)
    keys = set()
    for entry in stage.get("params", []):
        listed = {k for k in every if k == entry or k.startswith(entry + ".")}
        assert listed, f"dvc.yaml lists {entry!r}, which is no params.yaml key"
        keys |= listed
    return keys


def test_each_stage_depends_on_every_key_it_reads_except_operational_ones() -> None:
    """A stage reruns when a key that shapes its outputs changes and only then: dvc.yaml lists each
    section's keys except config.OPERATIONAL_KEYS (threads, key names, timeouts, retries, gates; not the
    endpoints, which decide who writes the outputs)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    every = _fields(Params)
    assert every >= OPERATIONAL_KEYS
    for name, stage in stages.items():
        own = {k for k in _stage_params(stage) if k.startswith(name + ".")}
        wanted = {k for k in every if k.startswith(name + ".")} - OPERATIONAL_KEYS
        assert own == wanted, (name, sorted(own ^ wanted))
        assert not _stage_params(stage) & OPERATIONAL_KEYS, name


def test_unknown_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lerning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"params.yaml: train.lerning_rate: unknown key"):
        load_params(p)


def test_nested_bad_value_is_named() -> None:
    with pytest.raises(ValueError, match=r"train.lora.rank: Input should be greater than 0"):
        parse(Params, {"train": {"lora": {"rank": 0}}})


def test_bad_literal_is_named() -> None:
    with pytest.raises(ValueError, match=r"generate.teacher"):
        parse(Params, {"generate": {"teacher": "gpt"}})


def test_llm_teacher_needs_a_model() -> None:
    with pytest.raises(ValueError, match=r"needs generate\.model"):
        parse(Params, {"generate": {"teacher": "openai"}})


def test_prompt_template_must_name_fields() -> None:
    with pytest.raises(ValueError, match=r"\{response\}"):
        parse(Params, {"generate": {"prompt_template": "Rewrite {instruction}"}})


def test_config_is_frozen() -> None:
    params = parse(Params, {})
    with pytest.raises(Exception, match="cannot assign"):
        params.train.learning_rate = 1.0  # type: ignore[misc]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_params(bad)


def test_a_duplicated_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    """DVC rejects a params file with a key twice; a stage started directly must not quietly take the
    last value."""
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  learning_rate: 0.001\n  batch_size: 8\n  learning_rate: 0.1\n")
    with pytest.raises(InputError, match=r"params.yaml:4: duplicate key 'learning_rate' \(first on line 2\)"):
        load_params(p)
    p.write_text("train:\n  batch_size: 8\nmerge: {}\ntrain:\n  batch_size: 4\n")
    with pytest.raises(InputError, match=r"params.yaml:4: duplicate key 'train' \(first on line 1\)"):
        load_params(p)


def test_yaml_merge_keys_may_override(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  <<: {batch_size: 8, epochs: 2}\n  batch_size: 4\n")
    params = load_params(p)
    assert params.train.batch_size == 4 and params.train.epochs == 2


@pytest.mark.parametrize(
    "key, value",
    [
        ("generate.base_url", "localhost:8765/v1"),
        ("generate.base_urls", ["http://a/v1", "b:8000/v1"]),
        ("evaluate.llm.base_url", "127.0.0.1:8000/v1"),
        ("generate.base_url", "ftp://host/v1"),
    ],
)
def test_base_urls_need_a_scheme(key: str, value: object) -> None:
    section, *rest = key.split(".")
    data: dict = {section: {}}
    node = data[section]
    for k in rest[:-1]:
        node = node.setdefault(k, {})
    node[rest[-1]] = value
    with pytest.raises(InputError, match=rf"{key}.*is not an http\(s\) URL"):
        parse(Params, data)


@pytest.mark.parametrize(
    "text, seed, batch_size",
    [("042", 42, "8"), ("0o17", 15, "8"), ("1_000", 1000, "8")],
)
def test_params_read_as_dvc_reads_them(tmp_path: Path, text: str, seed: int, batch_size: str) -> None:
    """Issue 23, point 13: `seed: 042` was 34 to the stages (PyYAML, YAML 1.1) and 42 to DVC (YAML 1.2),
    so DVC said "up to date" for a seed the stage did not use. Both now read the same value."""
    from dvc.utils.serialize import parse_yaml

    p = tmp_path / "params.yaml"
    p.write_text(f"prepare:\n  seed: {text}\ntrain:\n  batch_size: {batch_size}\n")
    assert load_params(p).prepare.seed == seed == parse_yaml(p.read_text(), str(p))["prepare"]["seed"]


def test_the_shipped_params_are_the_code_defaults() -> None:
    """Issue 23, point 13: one source of defaults. A key deleted from params.yaml falls back to the value
    params.yaml ships (train.learning_rate was 1e-3 in config.py and 5e-4 in params.yaml)."""
    assert load_params(ROOT / "params.yaml") == Params()


def test_any_key_deleted_falls_back_to_its_shipped_value(tmp_path: Path) -> None:
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in sorted(_keys(shipped)):
        data = yaml.safe_load((ROOT / "params.yaml").read_text())
        *path, last = key.split(".")
        node = data
        for k in path:
            node = node[k]
        del node[last]
        assert parse(Params, data) == Params(), key


def test_operational_keys_keep_trains_checkpoints(tmp_path: Path) -> None:
    """Issue 23, point 14: changing train.cpu_threads (documented as operational) discarded the resume
    checkpoints, because the resume fingerprint included it."""
    from genz_speak.config import TrainConfig
    from genz_speak.training.checkpoints import prepare_work_dir

    base, work = tmp_path / "base", tmp_path / "work"
    base.mkdir()
    (base / "config.json").write_text("{}")
    rows = [{"id": "q-1", "output": "x"}]
    prepare_work_dir(TrainConfig(resume=True, cpu_threads=2), rows, base, work)
    (work / "checkpoint-4").mkdir()
    (work / "checkpoint-4/trainer_state.json").write_text("{}")
    again = TrainConfig(resume=True, cpu_threads=8, save_steps=10)
    assert prepare_work_dir(again, rows, base, work) == str(work / "checkpoint-4")
    assert prepare_work_dir(TrainConfig(resume=True, learning_rate=1e-4), rows, base, work) is None
