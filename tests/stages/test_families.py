"""Five student families through prepare -> train -> merge -> evaluate's answers -> export, on CPU.

Each is a tiny random model of the family's real config class, with a tokenizer trained here in the
family's format and the family's real chat template (`genz_speak.testing.tiny`): Llama with SentencePiece
and no template (the TinyLlama base case), Llama 3 (llama3 rope), Qwen2.5 (q/k/v biases), Qwen3 (q/k
norms; thinking off), Gemma 3 (no system role, sliding window). The stage engines run in-process, one
family at a time (tests/stages/test_stages.py runs the stage scripts themselves).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from genz_speak.config import DecodingConfig, Params
from genz_speak.data.chat import prompt_completion, render
from genz_speak.data.dataset import read_split
from genz_speak.errors import InputError
from genz_speak.io import write_json
from genz_speak.params import parse
from genz_speak.testing.tiny import FAMILIES
from tests.conftest import DATA_FILES, ROOT

pytestmark = pytest.mark.slow

# The token that ends an assistant turn in each family's template, and llama.cpp's pre-tokenizer name for
# a byte-level vocabulary trained here (the converter recognises real ones by hash, never these).
END_OF_TURN = {
    "llama_spm": "</s>",
    "llama3": "<|eot_id|>",
    "qwen25": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "gemma3": "<end_of_turn>",
}
TOKENIZER_PRE = {"llama3": "llama-bpe", "qwen25": "qwen2", "qwen3": "qwen2"}


def family_params(model: Path, name: str) -> dict[str, Any]:
    """params.yaml shrunk to seconds for a tiny family model."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["prepare"].update(base_model=str(model), max_train_rows=16, validation_size=4)
    p["prepare"]["source"]["path"] = str(ROOT / DATA_FILES[0])
    p["train"].update(
        max_steps=2, batch_size=2, max_seq_length=256, logging_steps=1, cpu_threads=1, sample_questions=0
    )
    p["train"]["learning_rate"] = 1e-3
    p["merge"]["check_prompts"] = 2
    p["export"].update(check_prompts=2, tokenizer_pre=TOKENIZER_PRE.get(name))
    return p


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prepare's splits and generate's dataset (the corpus teacher): the same for every family."""
    from genz_speak.data.questions import load_source, split_rows
    from genz_speak.io import SkipBudget, write_jsonl
    from genz_speak.pipeline import generate

    root = tmp_path_factory.mktemp("families-data")
    params = parse(Params, family_params(root, "llama_spm"))
    split = split_rows(load_source(params.prepare, SkipBudget(0)), params.prepare)
    for part in ("train", "validation", "heldout"):
        write_jsonl(root / f"data/prepare/{part}.jsonl", getattr(split, part))
    paths = generate.Paths(root / "data/prepare", ROOT / DATA_FILES[1], root / "data/generate")
    write_json(root / "metrics/generate.json", generate.run(params.generate, paths))
    return root


@dataclass
class Run:
    name: str
    root: Path
    params: Params
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: list[Any] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.root / "models/prepare"

    @property
    def merged(self) -> Path:
        return self.root / "models/merge"


def _timed(run: Run, stage: str, engine: Any, cfg: Any, paths: Any) -> None:
    start = time.monotonic()
    run.metrics[stage] = engine(cfg, paths)
    run.seconds[stage] = round(time.monotonic() - start, 1)
    write_json(run.root / f"metrics/{stage}.json", run.metrics[stage])


@pytest.fixture(scope="module", params=FAMILIES)
def run(
    request: pytest.FixtureRequest,
    families: dict[str, Path],
    generated: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    """One family through the pipeline's engines, stage by stage, as dvc.yaml chains them."""
    from genz_speak.generation import answer_questions
    from genz_speak.pipeline import export, merge, prepare, train

    name = request.param
    root = tmp_path_factory.mktemp(name)
    (root / "params.yaml").write_text(yaml.safe_dump(family_params(families[name], name)))
    shutil.copytree(generated / "data", root / "data")
    shutil.copytree(generated / "metrics", root / "metrics")
    r = Run(name, root, parse(Params, yaml.safe_load((root / "params.yaml").read_text())))
    heldout = root / "data/prepare/heldout.jsonl"
    _timed(r, "prepare", prepare.run, r.params.prepare, prepare.Paths(root / "data/prepare", r.base))
    dataset = root / "data/generate/genz_dataset.jsonl"
    adapter = root / "models/train"
    train_paths = train.Paths(dataset, r.base, adapter, root / "dvclive/train", root / ".cache/train")
    _timed(r, "train", train.run, r.params.train, train_paths)
    _timed(r, "merge", merge.run, r.params.merge, merge.Paths(r.base, adapter, heldout, r.merged))
    start = time.monotonic()
    r.answers = answer_questions(
        r.merged, read_split(heldout)[:4], root / "answers.jsonl",
        decoding=DecodingConfig(max_new_tokens=8, repetition_penalty=1.2), batch_size=4,
    )  # fmt: skip
    r.seconds["answers"] = round(time.monotonic() - start, 1)
    metrics = [root / f"metrics/{s}.json" for s in ("prepare", "generate", "train", "merge")]
    export_paths = export.Paths(r.merged, heldout, root / "models/export", metrics, root / "params.yaml")
    _timed(r, "export", export.run, r.params.export, export_paths)
    print(f"\n{name}: seconds per stage {r.seconds}")
    return r


def test_prepare_gives_a_base_model_a_template_and_keeps_a_chat_models_own(run: Run) -> None:
    from transformers import AutoTokenizer

    base = run.metrics["prepare"]["base_model"]
    tok = AutoTokenizer.from_pretrained(run.base)
    source = json.loads((run.base / "template_source.json").read_text())
    if run.name == "llama_spm":  # the TinyLlama case: a base model, given the plain template
        assert base["chat_template"] == source["source"] == "plain" and source["new_token_ids"] == []
        assert tok.chat_template.startswith("{% if bos_token %}")
        assert (run.base / "tokenizer.model").is_file()  # the converter's SentencePiece path reads it
        assert tok.backend_tokenizer.pre_tokenizer.prepend_scheme == "always"  # legacy: as llama.cpp splits
    else:
        own = AutoTokenizer.from_pretrained(run.params.prepare.base_model).chat_template
        assert base["chat_template"] == "model" and tok.chat_template == own
    assert (run.base / "tokenizer.model").is_file() == (run.name in ("llama_spm", "gemma3"))


def test_train_puts_the_loss_on_the_answer_and_its_end_of_turn_only(run: Run) -> None:
    """A rendered training row as TRL tokenizes it for this run's trainer: the labelled tokens are the
    answer and the turn's end, exactly; the prompt (template markers, the question, Qwen3's empty think
    block) carries none."""
    from datasets import Dataset

    from genz_speak.training import backends, sft

    assert run.metrics["train"]["steps"] == 2 and math.isfinite(run.metrics["train"]["final_loss"])
    row = prompt_completion({"instruction": "Why is the sky blue?", "output": "sunlight scatters, no cap 🌌"})
    prepared = backends.load("transformers", run.base, run.params.train)
    trainer, _, _ = sft.build_trainer(
        run.params.train, "transformers", prepared, Dataset.from_list([row]), None, run.root / "mask", []
    )
    example = trainer.train_dataset[0]
    labels = trainer.data_collator([example])["labels"][0].tolist()
    ids = example["input_ids"]
    tok = prepared.tokenizer
    prompt = render(tok, row["prompt"])
    full = render(tok, row["prompt"] + row["completion"], add_generation_prompt=False)
    assert full.startswith(prompt)
    first = labels.index(next(x for x in labels if x != -100))
    assert all(x == -100 for x in labels[:first]) and all(x != -100 for x in labels[first:])
    assert ids[:first] == tok(prompt, add_special_tokens=False)["input_ids"]  # the whole prompt, untrained
    assert ids == tok(full, add_special_tokens=False)["input_ids"]  # the rendered row, all of it
    assert tok.decode(ids[first:]).startswith("sunlight scatters, no cap 🌌")
    assert tok.convert_tokens_to_ids(END_OF_TURN[run.name]) in ids[first:]
    if run.name == "qwen3":
        assert prompt.endswith(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )  # thinking off, in the prompt
    if run.name == "llama_spm":
        assert ids[0] == tok.bos_token_id  # llama.cpp puts a BOS first too


def test_merge_checks_the_saved_folder_against_base_plus_adapter(run: Run) -> None:
    m = run.metrics["merge"]
    assert m["passed"] and m["max_logit_diff"] <= m["tolerance"] and m["adapter_effect"] > 0
    assert (run.merged / "chat_template.jinja").read_text() == (run.base / "chat_template.jinja").read_text()
    assert (run.merged / "tokenizer.model").is_file() == (run.base / "tokenizer.model").is_file()


def test_evaluate_answers_and_generation_stops_at_the_end_of_turn(run: Run) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    assert len(run.answers) == 4 and all(isinstance(a.text, str) for a in run.answers)
    tok = AutoTokenizer.from_pretrained(run.merged)
    eos = GenerationConfig.from_pretrained(run.merged).eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    assert tok.convert_tokens_to_ids(END_OF_TURN[run.name]) in eos  # an answer ends where its turn does


def test_export_writes_gguf_that_llama_cpp_runs_like_transformers(run: Run) -> None:
    m = run.metrics["export"]
    out = run.root / "models/export"
    assert sorted(p.name for p in out.iterdir()) == [
        "Modelfile", "README.md", "genz-speak-f16.gguf", "genz-speak-q8_0.gguf",
    ]  # fmt: skip
    assert m["converter"]["tokenizer_pre"] == TOKENIZER_PRE.get(run.name)
    for fmt in ("f16", "q8_0"):
        r = m["formats"][fmt]
        print(
            f"{run.name} {fmt}: token texts {r['token_texts']} (problems {len(r['tokenizer_problems'])}), "
            f"top-1 {r['top1_agreement']}, next token {r['next_token_agreement']}, "
            f"max |logit diff| {r['max_logit_diff']} (tolerance {r['tolerance']})"
        )
        assert r["check"] == "llama.cpp" and r["passed"] and r["tokenizer_problems"] == []
        assert r["max_logit_diff"] <= r["tolerance"] and r["next_token_agreement"] == 1.0
    assert m["formats"]["f16"]["max_logit_diff"] < 0.02 and m["formats"]["f16"]["top1_agreement"] > 0.95
    modelfile = (out / "Modelfile").read_text()
    assert f"PARAMETER stop {json.dumps(END_OF_TURN[run.name])}" in modelfile
    if run.name == "gemma3":  # the system message folded into the first user turn, as Gemma's template does
        assert "{{ $system }}\n\n" in modelfile and 'SYSTEM """' not in modelfile
    if run.name == "llama_spm":
        assert "chat template: genz-speak's plain one" in (out / "README.md").read_text()


# ---------------------------------------------------------------------------------- what a family refuses
def test_sliding_window_attention_refuses_padding_free_batches(
    families: dict[str, Path], tmp_path: Path
) -> None:
    """Gemma 3 packed (padding-free, genz_varlen): refused with one line naming the keys, before training."""
    from genz_speak.training import backends, sft

    params = parse(Params, {"train": {"packing": True, "cpu_threads": 1}}).train
    prepared = backends.load("transformers", families["gemma3"], params)
    with pytest.raises(
        InputError, match=r"train.packing/train.padding_free: gemma3_text uses sliding-window"
    ):
        sft.build_trainer(params, "transformers", prepared, [], None, tmp_path, [])


def test_own_template_required_of_a_base_model_names_the_key(
    families: dict[str, Path], tmp_path: Path
) -> None:
    from genz_speak.base_model import materialize_base_model

    with pytest.raises(InputError, match=r"params.yaml: prepare.chat_template: own, but .* has no chat"):
        materialize_base_model(str(families["llama_spm"]), tmp_path / "base", "float32", "own")
    assert not (tmp_path / "base").exists()
    with pytest.raises(InputError, match=r"prepare.chat_template"):
        parse(Params, {"prepare": {"chat_template": "zephyr"}})


def test_chatml_adds_tokens_whose_rows_train_and_merge(
    families: dict[str, Path], generated: Path, tmp_path: Path
) -> None:
    """prepare.chat_template: chatml on the base model: two new special tokens, the end one the EOS; train
    updates their embedding rows (peft's trainable_token_indices) and no other row; merge keeps them."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from genz_speak.base_model import materialize_base_model
    from genz_speak.pipeline import export, merge, train

    base, adapter, merged = tmp_path / "base", tmp_path / "adapter", tmp_path / "merged"
    info = materialize_base_model(str(families["llama_spm"]), base, "float32", "chatml")
    tok = AutoTokenizer.from_pretrained(base)
    new = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert info["chat_template"] == "chatml" and new == [1000, 1001] and tok.eos_token == "<|im_end|>"
    assert (
        render(tok, [{"role": "user", "content": "hi"}])
        == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    params = parse(Params, family_params(base, "llama_spm"))
    dataset = generated / "data/generate/genz_dataset.jsonl"
    metrics = train.run(
        params.train, train.Paths(dataset, base, adapter, tmp_path / "live", tmp_path / "work")
    )
    heldout = generated / "data/prepare/heldout.jsonl"
    assert merge.run(params.merge, merge.Paths(base, adapter, heldout, merged))["passed"]
    before, after = load_file(base / "model.safetensors"), load_file(merged / "model.safetensors")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):  # untied, as TinyLlama: both trained
        moved = (after[key] - before[key].to(after[key].dtype)).abs().amax(-1)  # merge stores float16
        assert after[key].shape[0] == 1002 and bool((moved[new] > 0).all()), key
        assert torch.equal(moved[:1000], torch.zeros(1000, dtype=moved.dtype)), key
    assert metrics["trainable_parameters"] > 2 * 2 * 64  # the LoRA weights and the 2 x 2 new rows
    # The new tokens reach the GGUF as control tokens llama.cpp matches whole (the export checks them).
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(family_params(base, "llama_spm")))
    cfg = parse(Params, {"export": {"formats": ["f16"], "modelfile_from": "f16", "check_prompts": 2}}).export
    exported = export.run(
        cfg, export.Paths(merged, heldout, tmp_path / "export", [], tmp_path / "params.yaml")
    )
    assert exported["formats"]["f16"]["tokenizer_problems"] == [] and exported["passed"]
    assert 'PARAMETER stop "<|im_end|>"' in (tmp_path / "export/Modelfile").read_text()
