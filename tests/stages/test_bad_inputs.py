"""Bad params and bad data, table-driven: each case runs a stage exactly as dvc.yaml does, in a workspace
that already holds outputs, and asserts the exact error line, exit status 2, and untouched outputs."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from genz_speak.data.dataset import dataset_row
from genz_speak.data.questions import validate_rows
from genz_speak.io import read_jsonl, write_jsonl
from tests.conftest import ROOT, stage_process, write_prepared

GOOD = validate_rows(read_jsonl(ROOT / "data/questions.jsonl")[:40], "questions")
SOURCE = "bad.jsonl"


def dolly(row: dict[str, Any]) -> str:
    return json.dumps({k: row[k] for k in ("instruction", "context", "response", "category")})


def lines(*extra: tuple[int, str]) -> bytes:
    """The 40 good source rows as JSONL, with `extra` (0-based line index, text) replacing lines."""
    out = [dolly(r) for r in GOOD]
    for i, text in extra:
        out[i] = text
    return ("\n".join(out) + "\n").encode()


def dataset_rows() -> list[dict[str, Any]]:
    return [dataset_row(r, "train", "ngl " + r["response"]) for r in GOOD[:6]]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet(rows: list[dict[str, Any]], **same: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import pandas as pd

        pd.DataFrame([{**same, **r} for r in rows]).to_parquet(path)

    return write


def without_chat_template(path: Path) -> None:
    """A model folder whose tokenizer has no chat template (a base, not an instruct, model)."""
    from genz_speak.testing import tiny

    folder = tiny.llama(path, tiny.student_tokenizer())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)


Case = tuple[str, dict[str, Any], dict[str, bytes | Callable[[Path], None]], str]
# (stage, params overrides {"section.key": value}, files to write, the exact error text expected)
CASES: dict[str, Case] = {
    # ---- params
    "unknown key": (
        "prepare",
        {"train.lerning_rate": 0.1},
        {},
        "params.yaml: train.lerning_rate: unknown key",
    ),
    "unknown nested key": (
        "prepare",
        {"train.lora.rnak": 8},
        {},
        "params.yaml: train.lora.rnak: unknown key",
    ),
    "unknown section": ("prepare", {"trian": {}}, {}, "params.yaml: trian: unknown key"),
    "wrong type": (
        "prepare",
        {"train.batch_size": "eight"},
        {},
        "params.yaml: train.batch_size: Input should be a valid integer",
    ),
    "out of range": (
        "prepare",
        {"train.learning_rate": 2.0},
        {},
        "params.yaml: train.learning_rate: Input should be less than 1",
    ),
    "zero held-out": (
        "prepare",
        {"prepare.heldout_size": 0},
        {},
        "params.yaml: prepare.heldout_size: Input should be greater than 0",
    ),
    "negative tolerance": (
        "prepare",
        {"merge.tolerance": -1},
        {},
        "params.yaml: merge.tolerance: Input should be greater than 0",
    ),
    "bad choice": (
        "prepare",
        {"generate.teacher": "gpt"},
        {},
        "params.yaml: generate.teacher: Input should be 'corpus', 'rules', 'transformers', 'openai' "
        "or 'vllm'",
    ),
    "packing with grouping": (
        "prepare",
        {"train.packing": True, "train.group_by_length": True},
        {},
        "params.yaml: train: packing and group_by_length are alternatives; enable one",
    ),
    "packing without padding-free": (
        "prepare",
        {"train.packing": True, "train.padding_free": False},
        {},
        "params.yaml: train: bfd packing is padding-free: padding_free: false contradicts it",
    ),
    "micro-batch not a divisor": (
        "prepare",
        {"train.micro_batch": 3, "train.batch_size": 2, "train.gradient_accumulation_steps": 4},
        {},
        "params.yaml: train: micro_batch 3 must divide batch_size * gradient_accumulation_steps",
    ),
    "two kinds of endpoint list": (
        "prepare",
        {"generate.base_url": "http://a/v1", "generate.base_urls": ["http://b/v1"]},
        {},
        "params.yaml: generate: base_url and base_urls are alternatives: list every endpoint in base_urls",
    ),
    "an endpoint listed twice": (
        "prepare",
        {"generate.base_urls": ["http://b/v1", "http://b/v1"]},
        {},
        "params.yaml: generate: base_urls lists an endpoint twice (raise concurrency instead)",
    ),
    "LLM teacher without a model": (
        "prepare",
        {"generate.teacher": "openai"},
        {},
        "params.yaml: generate: teacher 'openai' needs generate.model",
    ),
    "template without a field": (
        "prepare",
        {"generate.prompt_template": "Rewrite {instruction}"},
        {},
        "params.yaml: generate: prompt_template must contain {response}",
    ),
    "unsloth merge without CUDA": (
        "merge",
        {"merge.backend": "unsloth"},
        {},
        "params.yaml: merge.backend: unsloth needs a CUDA GPU; use auto or peft here",
    ),
    "a key twice": (
        "prepare",
        {},
        {"params.yaml": b"train:\n  batch_size: 8\n  batch_size: 4\n"},
        "params.yaml:3: duplicate key 'batch_size' (first on line 2)",
    ),
    "base_url without a scheme": (
        "prepare",
        {"generate.teacher": "openai", "generate.model": "m", "generate.base_url": "localhost:8765/v1"},
        {},
        "params.yaml: generate.base_url: 'localhost:8765/v1' is not an http(s) URL",
    ),
    "not YAML": ("prepare", {}, {"params.yaml": b"train: [unclosed\n"}, "params.yaml: not valid YAML"),
    "not a mapping": (
        "prepare",
        {},
        {"params.yaml": b"- train\n"},
        "params.yaml: expected a mapping of sections",
    ),
    # ---- source data (prepare.source.path = bad.jsonl unless the case writes params)
    "broken JSON line": (
        "prepare",
        {},
        {SOURCE: lines((2, '{"instruction": "x",'))},
        "bad.jsonl:3: not valid JSON",
    ),
    "missing field": (
        "prepare",
        {},
        {SOURCE: lines((1, '{"instruction": "Why?", "category": "open_qa"}'))},
        "bad.jsonl:2: missing or empty field(s) ['response']",
    ),
    "blank response (NBSP)": (
        "prepare",
        {},
        {SOURCE: lines((2, '{"instruction": "Why?", "response": "\\u00a0 ", "category": "open_qa"}'))},
        "bad.jsonl:3: missing or empty field(s) ['response']",
    ),
    "wrong field type": (
        "prepare",
        {},
        {SOURCE: lines((0, '{"instruction": 5, "response": "r", "category": "open_qa"}'))},
        "bad.jsonl:1: field(s) ['instruction'] must be strings",
    ),
    "unknown category": (
        "prepare",
        {},
        {SOURCE: lines((3, '{"instruction": "i", "response": "r", "category": "poetry"}'))},
        "bad.jsonl:4: unknown category 'poetry'",
    ),
    "not an object": (
        "prepare",
        {},
        {SOURCE: lines((4, "[1, 2]"))},
        "bad.jsonl:5: expected a JSON object, got list",
    ),
    "empty file": ("prepare", {}, {SOURCE: b""}, "bad.jsonl: no usable rows"),
    "non-UTF-8 bytes": (
        "prepare",
        {},
        {SOURCE: lines() + b'{"instruction": "caf\xe9", "response": "r", "category": "open_qa"}\n'},
        "bad.jsonl:41: not UTF-8 (byte 20: invalid continuation byte)",
    ),
    "10 MB line": (
        "prepare",
        {},
        {SOURCE: lines((1, json.dumps({"instruction": "x" * 10_000_000})))},
        "bad.jsonl:2: line of 9.5 MiB is over the 1 MiB limit",
    ),
    "over the skip budget": (
        "prepare",
        {"prepare.max_bad_rows": 1},
        {SOURCE: lines((1, "{"), (5, "{"))},
        "bad.jsonl:6: not valid JSON",
    ),
    "missing source": ("prepare", {"prepare.source.path": "nope.jsonl"}, {}, "nope.jsonl: file not found"),
    "unsupported format": (
        "prepare",
        {"prepare.source.path": "rows.csv"},
        {"rows.csv": b"a,b\n"},
        "params.yaml: prepare.source.path: rows.csv must be a .jsonl or .parquet file",
    ),
    "corrupt Parquet": (
        "prepare",
        {"prepare.source.path": "bad.parquet"},
        {"bad.parquet": b"PAR1 not really"},
        "bad.parquet: not a readable Parquet file",
    ),
    "Parquet wrong type": (
        "prepare",
        {"prepare.source.path": "bad.parquet"},
        {
            "bad.parquet": parquet(
                [{"response": "r"}, {"response": None}], category="open_qa", instruction="i"
            )
        },
        "bad.parquet:2: missing or empty field(s) ['response']",
    ),
    # ---- the dataset the train stage reads
    "duplicate ids": (
        "train",
        {},
        {"data/generate/genz_dataset.jsonl": jsonl([*dataset_rows(), dataset_rows()[1]])},
        f"genz_dataset.jsonl:7: duplicate id '{GOOD[1]['id']}' (first on line 2)",
    ),
    "dataset missing output": (
        "train",
        {},
        {
            "data/generate/genz_dataset.jsonl": jsonl(
                [{k: v for k, v in r.items() if k != "output"} for r in dataset_rows()]
            )
        },
        "genz_dataset.jsonl:1: missing field(s) ['output']",
    ),
    "dataset bad split": (
        "train",
        {},
        {"data/generate/genz_dataset.jsonl": jsonl([{**r, "split": "test"} for r in dataset_rows()])},
        "genz_dataset.jsonl:1: split 'test' is not one of ('train', 'validation', 'heldout')",
    ),
    "dataset empty": (
        "train",
        {},
        {"data/generate/genz_dataset.jsonl": b"\n"},
        "genz_dataset.jsonl: no rows (the file is empty)",
    ),
    "packed rows under sdpa": (
        "train",
        {"train.packing": True, "train.attn_implementation": "sdpa"},
        {},
        "params.yaml: train.attn_implementation: sdpa lets the rows of a padding-free batch (train.packing "
        "with bfd, or train.padding_free) attend to each other",
    ),
    # ---- data parallelism: said before any process is launched
    "processes not splitting the step": (
        "train",
        {"train.num_processes": 3, "train.batch_size": 4},
        {},
        "params.yaml: train.num_processes: 3 processes cannot split the 4 rows of an optimizer step",
    ),
    "processes zero": (
        "train",
        {"train.num_processes": 0},
        {},
        "params.yaml: train.num_processes: Input should be 'auto' or Input should be greater than 0",
    ),
    # ---- issue 23, point 13: values as written, finite, checked against what they name
    "infinite epochs": (
        "prepare",
        {"train.epochs": float("inf")},
        {},
        "params.yaml: train.epochs: Input should be a finite number",
    ),
    "infinite timeout": (
        "prepare",
        {"generate.request_timeout": float("inf")},
        {},
        "params.yaml: generate.request_timeout: Input should be a finite number",
    ),
    "a boolean for an int": (
        "prepare",
        {"train.batch_size": True},
        {},
        "params.yaml: train.batch_size: Input should be a valid integer",
    ),
    "a fraction for an int": (
        "prepare",
        {"train.batch_size": 1.5},
        {},
        "params.yaml: train.batch_size: Input should be a valid integer",
    ),
    "an int for a boolean": (
        "prepare",
        {"train.packing": 1},
        {},
        "params.yaml: train.packing: Input should be a valid boolean",
    ),
    "YAML 1.1's yes for a boolean": (  # YAML 1.2, as DVC reads it: a string
        "prepare",
        {},
        {"params.yaml": b"train:\n  load_in_4bit: yes\n"},
        "params.yaml: train.load_in_4bit: Input should be a valid boolean",
    ),
    "a category typo": (
        "prepare",
        {"prepare.categories": ["open_qa", "brainstroming"]},
        {},
        "params.yaml: prepare.categories.1: Input should be 'open_qa', 'general_qa'",
    ),
    "an empty key variable": (
        "prepare",
        {"generate.api_key_env": ""},
        {},
        "params.yaml: generate.api_key_env: '' is not an environment variable name",
    ),
    "a key variable that is a key": (
        "prepare",
        {"evaluate.llm.api_key_env": "sk-abc-123"},
        {},
        "params.yaml: evaluate.llm.api_key_env: 'sk-abc-123' is not an environment variable name",
    ),
    "target modules the model lacks": (
        "train",
        {"train.lora.target_modules": ["q_proj", "qkv_proj"]},
        {},
        "params.yaml: train.lora.target_modules: ['qkv_proj'] name no module of models/prepare; its "
        "linear layers are ['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', "
        "'v_proj']",
    ),
    # ---- issue 23, point 15: formats that are almost JSONL
    "a JSON array": (
        "prepare",
        {},
        {SOURCE: ("[" + ",\n".join(dolly(r) for r in GOOD) + "]\n").encode()},
        "bad.jsonl: expected JSONL (one object per line), got a JSON array",
    ),
    "a pretty-printed JSON array": (
        "prepare",
        {},
        {SOURCE: json.dumps([json.loads(dolly(r)) for r in GOOD], indent=2).encode()},
        "bad.jsonl: expected JSONL (one object per line), got a JSON array",
    ),
    "a field twice in a row": (
        "prepare",
        {},
        {
            SOURCE: lines(
                (2, '{"instruction": "Why?", "response": "a", "response": "b", "category": "open_qa"}')
            )
        },
        "bad.jsonl:3: field 'response' given twice in one row",
    ),
    # ---- issue 23, point 11: checked before anything is written
    "a chat template required of a base model without one": (
        "prepare",
        {"prepare.base_model": "plain-model", "prepare.chat_template": "own"},
        {"plain-model": without_chat_template},
        "params.yaml: prepare.chat_template: own, but plain-model has no chat template",
    ),
    "every row masked away, after DVCLive started": (
        "train",
        {"train.max_seq_length": 16},
        {},
        "loss masking left 6/6 rows with no trained token",
    ),
    "the judge's key missing": (
        "evaluate",
        {"evaluate.judge": "openai", "evaluate.llm.api_key_env": "GENZ_NO_SUCH_KEY_SET"},
        {},
        "the OpenAI API needs a key: export GENZ_NO_SUCH_KEY_SET=...",
    ),
}

# Outputs a previous run left: none of them may change when a stage fails on bad input.
PRIOR_OUTPUTS = [
    "data/prepare/train.jsonl",
    "data/prepare/validation.jsonl",
    "data/prepare/heldout.jsonl",
    "metrics/prepare.json",
    "models/merge/config.json",
    "models/train/adapter_config.json",
    "metrics/train.json",
    "dvclive/train/metrics.json",
    "data/evaluate/answers.jsonl",
]


def digest(root: Path) -> dict[str, str]:
    return {p: hashlib.sha256((root / p).read_bytes()).hexdigest() for p in PRIOR_OUTPUTS}


@pytest.fixture
def workspace(tmp_path: Path, tiny_params_dict: dict[str, Any], tiny_model: Path) -> Path:
    params = tiny_params_dict
    params["prepare"]["source"]["path"] = SOURCE
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / SOURCE).write_bytes(lines())
    write_jsonl(tmp_path / "data/prepare/train.jsonl", GOOD[:20])
    write_jsonl(tmp_path / "data/prepare/validation.jsonl", GOOD[20:30])
    write_jsonl(tmp_path / "data/prepare/heldout.jsonl", GOOD[30:])
    write_jsonl(tmp_path / "data/generate/genz_dataset.jsonl", dataset_rows())
    for name, text in {
        "metrics/prepare.json": "{}",
        "metrics/train.json": "{}",
        "models/merge/config.json": "{}",
        "models/train/adapter_config.json": "{}",
        "dvclive/train/metrics.json": '{"step": 1}',
        "data/evaluate/answers.jsonl": '{"id": "q-previous"}\n',
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    shutil.copytree(tiny_model, tmp_path / "models/prepare")
    shutil.copy(ROOT / "data/genz_corpus.jsonl", tmp_path / "data/genz_corpus.jsonl")
    return tmp_path


def set_key(params: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = params
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_fails_clearly_and_touches_nothing(workspace: Path, case: str) -> None:
    stage, overrides, files, expected = CASES[case]
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    for key, value in overrides.items():
        set_key(params, key, value)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    for name, content in files.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(workspace / name)
        else:
            (workspace / name).write_bytes(content)
    before = digest(workspace)

    proc = stage_process(workspace, stage)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if " ERROR genz_speak.stage: " in line]
    assert len(error) == 1 and expected in error[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert digest(workspace) == before
    assert not list(workspace.rglob("*.tmp")), "a temporary file was left behind"


def test_skip_budget_skips_and_reports(workspace: Path) -> None:
    (workspace / SOURCE).write_bytes(lines((1, "{"), (5, '{"instruction": "i", "category": "open_qa"}')))
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["prepare"]["max_bad_rows"] = 2
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage_process(workspace, "prepare")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped (prepare.max_bad_rows = 2): bad.jsonl:2: not valid JSON" in proc.stderr
    assert "bad.jsonl:6: missing or empty field(s) ['response']" in proc.stderr
    metrics = json.loads((workspace / "metrics/prepare.json").read_text())
    assert metrics["dropped"]["bad"] == 2
    assert sum(metrics["rows"].values()) == 38


def test_text_that_crashed_prepare_is_read_and_cleaned(workspace: Path) -> None:
    """Issue 23, points 2 and 15: a file saved with a UTF-8 BOM was refused, and a lone surrogate escape
    (an emoji cut in half) crashed prepare with a UnicodeEncodeError traceback that max_bad_rows could not
    skip. The BOM is skipped; surrogates become U+FFFD and control characters go, where the text enters."""
    cut = '{"instruction": "Why? \\ud83d", "response": "Because\\u0000 so.", "category": "open_qa"}'
    (workspace / SOURCE).write_bytes(b"\xef\xbb\xbf" + lines((0, cut)))
    proc = stage_process(workspace, "prepare")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        r
        for name in ("train", "validation", "heldout")
        for r in read_jsonl(workspace / f"data/prepare/{name}.jsonl")
    ]
    assert len(rows) == 40
    (row,) = [r for r in rows if r["instruction"].startswith("Why? ")]
    assert (row["instruction"], row["response"]) == ("Why? \ufffd", "Because so.")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"train.lerning_rate": 0.1}, "other.yaml: train.lerning_rate: unknown key"),
        ({"merge.backend": "unsloth"}, "other.yaml: merge.backend: unsloth needs a CUDA GPU"),
    ],
    ids=["while loading", "found by the stage"],
)
def test_errors_name_the_params_file_given(workspace: Path, overrides: dict[str, Any], expected: str) -> None:
    """Issue 23, point 13: with --params other.yaml, errors said "params.yaml"."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    for key, value in overrides.items():
        set_key(params, key, value)
    (workspace / "other.yaml").write_text(yaml.safe_dump(params))
    proc = stage_process(workspace, "prepare" if "lerning" in expected else "merge", params="other.yaml")
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if " ERROR genz_speak.stage: " in line]
    assert len(error) == 1 and expected in error[0], proc.stderr[-3000:]


def test_a_full_disk_is_one_line(workspace: Path, own_cache: Path) -> None:
    """Issue 23, point 10: a full disk gave a traceback. The shared cache's log is /dev/full here (every
    write: ENOSPC): one line naming the file, exit status 1, and the dataset left as it was."""
    write_prepared(workspace, GOOD[:20], GOOD[20:30], GOOD[30:])
    prior = (workspace / "data/generate/genz_dataset.jsonl").read_bytes()
    own_cache.mkdir(parents=True, exist_ok=True)
    (own_cache / "generate.jsonl").symlink_to("/dev/full")
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["generate"]["corpus_missing"] = "rules"  # these rows have no hand-written rewrite
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage_process(workspace, "generate")
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if " ERROR genz_speak.stage: " in line]
    assert len(error) == 1 and f"no space left on the disk writing {own_cache}/generate.jsonl" in error[0]
    assert "Traceback" not in proc.stderr
    assert (workspace / "data/generate/genz_dataset.jsonl").read_bytes() == prior
