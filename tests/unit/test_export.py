"""The GGUF files (llama.cpp's own converter, run offline), their checks in llama.cpp, the Ollama template
derived from the chat template, and the model card, on tiny models (real files, real llama.cpp through
llama-cpp-python)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from genz_speak.config import Params
from genz_speak.errors import InputError
from genz_speak.export import card, converter, ollama, verify
from genz_speak.params import parse
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def fp16_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model stored in float16, as the merge stage writes it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("fp16")
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def _load(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(model_dir),
    )


def _convert(
    model_dir: Path, out: Path, tokenizer_pre: str | None = None, formats: tuple[str, ...] = ("f16", "q8_0")
) -> dict[str, Path]:
    """The folder through `stage` and llama.cpp's converter, as the export stage runs them."""
    _, tok = _load(model_dir)
    template = converter.gguf_chat_template(tok.chat_template)
    staged = converter.stage(model_dir, out / "staged", tok, template, "apache-2.0")
    files = {fmt: out / f"tiny-{fmt}.gguf" for fmt in formats}
    converter.convert(staged, files, name="tiny", tokenizer_pre=tokenizer_pre)
    return files


@pytest.fixture(scope="module")
def written(fp16_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _convert(fp16_model, tmp_path_factory.mktemp("gguf"))


def _check(model_dir: Path, path: Path, reference: Path | None = None) -> dict[str, Any]:
    """`verify.check_llama_cpp` of `path` against `reference` (default: the folder it came from)."""
    from genz_speak.data.chat import chat_prompts, encoded_prompts
    from genz_speak.data.dataset import read_split
    from genz_speak.models import load_tokenizer

    model, tok = _load(reference or model_dir)[0], load_tokenizer(model_dir)
    rows = read_split(ROOT / "data/prepare/heldout.jsonl")
    inputs = encoded_prompts(tok, rows, 2)
    return verify.check_llama_cpp(
        path, tok, ollama.decompose(tok), chat_prompts(tok, rows, 2), inputs, verify.logits(model, inputs)
    )


def test_tensors_and_metadata(fp16_model: Path, written: dict[str, Path]) -> None:
    """What llama.cpp's converter writes for a SmolLM2-shaped model: the same tensors as the hand-written
    writer it replaced (f16 matrices, q8_0 blocks, float32 norms, no output.weight when tied), and the
    vocabulary, pre-tokenizer, special tokens, chat template and licence."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fp16_model)
    for fmt, matrices in (("f16", gguf.GGMLQuantizationType.F16), ("q8_0", gguf.GGMLQuantizationType.Q8_0)):
        reader = gguf.GGUFReader(written[fmt])
        types = [t.tensor_type for t in reader.tensors]
        assert types.count(matrices) == 15 and types.count(gguf.GGMLQuantizationType.F32) == 5
        assert "output.weight" not in {t.name for t in reader.tensors}  # tied embeddings
    assert written["q8_0"].stat().st_size < 0.7 * written["f16"].stat().st_size

    def field(key: str) -> Any:
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama" and field("general.name") == "tiny"
    assert field("general.license") == "apache-2.0"  # from the staged model card
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "smollm"  # by hash
    tokens = field("tokenizer.ggml.tokens")
    assert tokens[tok.convert_tokens_to_ids("<|im_start|>")] == "<|im_start|>"
    types = field("tokenizer.ggml.token_type")
    assert types[tok.convert_tokens_to_ids("<|im_end|>")] == gguf.TokenType.CONTROL
    assert types[tok.convert_tokens_to_ids("Ġthe")] == gguf.TokenType.NORMAL
    assert field("tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert field("tokenizer.ggml.add_bos_token") is False  # SmolLM2's template has no BOS: none added
    assert field("tokenizer.chat_template") == tok.chat_template


def test_llama_cpp_agrees_with_the_folder_and_sees_another_model(
    fp16_model: Path, written: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python: bash scripts/setup.sh tests")
    from genz_speak.testing import tiny

    check = _check(fp16_model, written["f16"])
    assert check["check"] == "llama.cpp" and check["tokenizer_problems"] == []
    assert check["max_logit_diff"] < 0.01 and check["next_token_agreement"] == 1.0
    assert check["token_texts"] == len(verify.PROBES) + len(ollama.PROBES) + 2
    q8 = _check(fp16_model, written["q8_0"])
    assert 0.0 < q8["max_logit_diff"] < 0.5 and q8["top1_agreement"] > 0.9
    other = tiny.llama(tmp_path / "other", _load(fp16_model)[1], seed=1)  # same shape, other weights
    assert _check(fp16_model, written["f16"], reference=other)["max_logit_diff"] > 0.1


def test_a_wrong_pre_tokenizer_name_shows_in_the_token_check(
    families: dict[str, Path], tmp_path: Path
) -> None:
    """A Llama 3 vocabulary written with Qwen's pre-tokenizer (digits one by one) converts, and the check
    in llama.cpp catches it; with Llama 3's own it finds nothing."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python: bash scripts/setup.sh tests")
    model = families["llama3"]
    right = _convert(model, tmp_path / "right", "llama-bpe", ("f16",))["f16"]
    wrong = _convert(model, tmp_path / "wrong", "qwen2", ("f16",))["f16"]
    assert _check(model, right)["tokenizer_problems"] == []
    problems = _check(model, wrong)["tokenizer_problems"]
    assert any("12 x 12 = 144" in p for p in problems), problems


def test_staging_gives_the_converter_what_transformers_5_does_not_save(
    families: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    model = families["qwen3"]
    tok = AutoTokenizer.from_pretrained(model)
    assert "added_tokens_decoder" not in json.loads((model / "tokenizer_config.json").read_text())
    template = converter.gguf_chat_template(tok.chat_template)
    staged = converter.stage(model, tmp_path / "staged", tok, template, "llama3.2")
    added = json.loads((staged / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert added[str(tok.convert_tokens_to_ids("<|im_end|>"))]["special"] is True
    assert added[str(tok.convert_tokens_to_ids("<think>"))]["special"] is False
    assert (staged / "chat_template.jinja").read_text().startswith("{%- set enable_thinking = false %}")
    assert (staged / "README.md").read_text() == '---\nlicense: "llama3.2"\n---\n'
    assert (staged / "model.safetensors").resolve() == (model / "model.safetensors").resolve()
    assert converter.gguf_chat_template("{{ messages }}") == "{{ messages }}"  # no switch: as it is


def test_what_the_converter_cannot_take_is_one_line_naming_it(
    fp16_model: Path, families: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    tok = AutoTokenizer.from_pretrained(fp16_model)
    opt = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=16, ffn_dim=32, num_hidden_layers=1,
                             num_attention_heads=2, word_embed_proj_dim=16)).save_pretrained(opt)  # fmt: skip
    tok.save_pretrained(opt)
    with pytest.raises(InputError, match=r"^export: model_type 'opt' \(OPTForCausalLM\) is not one llama"):
        _convert(opt, tmp_path / "x", formats=("f16",))
    with pytest.raises(InputError, match=r"params.yaml: export.tokenizer_pre: .* \(hash [0-9a-f]{64}\)"):
        _convert(families["llama3"], tmp_path / "y", formats=("f16",))
    assert not list((tmp_path / "y").glob("*.gguf"))


def test_without_llama_cpp_transformers_checks_what_it_reads_faithfully(
    fp16_model: Path, written: dict[str, Path], families: dict[str, Path], tmp_path: Path
) -> None:
    """The fallback check: a Llama with default rope reloads exactly through transformers; a Llama 3
    (rope scaling transformers' GGUF reader drops) is not checked there, and the result says so."""
    from genz_speak.data.chat import encoded_prompts
    from genz_speak.data.dataset import read_split
    from genz_speak.models import load_tokenizer

    rows = read_split(ROOT / "data/prepare/heldout.jsonl")
    model, tok = _load(fp16_model)[0], load_tokenizer(fp16_model)
    inputs = encoded_prompts(tok, rows, 2)
    check = verify.check_transformers(written["f16"], tok, model.config, inputs, verify.logits(model, inputs))
    assert check["check"] == "transformers" and check["max_logit_diff"] == 0.0
    assert check["tokenizer_problems"] == []
    llama3 = _convert(families["llama3"], tmp_path, "llama-bpe", ("f16",))["f16"]
    model, tok = _load(families["llama3"])[0], load_tokenizer(families["llama3"])
    inputs = encoded_prompts(tok, rows, 2)
    skipped = verify.check_transformers(llama3, tok, model.config, inputs, verify.logits(model, inputs))
    assert skipped["check"].startswith("none: transformers' GGUF reader does not read llama (llama3 rope)")


# ------------------------------------------------------------------------------------------------ ollama
@pytest.fixture(scope="module")
def tokenizer(fp16_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fp16_model)


def test_decompose_finds_chatml_wrappers_and_the_default_system(tokenizer: Any) -> None:
    fmt = ollama.decompose(tokenizer)
    assert fmt.prefix == {r: f"<|im_start|>{r}\n" for r in ollama.ROLES}
    assert fmt.suffix == {r: "<|im_end|>\n" for r in ollama.ROLES}
    assert fmt.generation_prompt == "<|im_start|>assistant\n"
    assert fmt.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert ollama.check_roundtrip(tokenizer, fmt) == len(ollama.PROBES)


def test_a_template_that_is_not_a_wrapper_per_role_is_refused(tokenizer: Any) -> None:
    fmt = ollama.decompose(tokenizer)
    original = tokenizer.chat_template
    try:  # upper-cases contents (not the sentinels): no prefix + content + suffix reproduces that
        tokenizer.chat_template = original.replace("message['content']", "message['content'] | upper")
        with pytest.raises(InputError, match="not a fixed wrapper per role"):
            ollama.check_roundtrip(tokenizer, fmt)
        tokenizer.chat_template = (  # a template that refuses a third message
            "{% for m in messages %}{{ m['content'] }}{% endfor %}"
            "{{ raise_exception('x') if messages|length > 2 }}"
        )
        with pytest.raises(InputError, match="cannot render the messages system, user, assistant, user"):
            ollama.decompose(tokenizer)
    finally:
        tokenizer.chat_template = original


def test_modelfile_text(tokenizer: Any) -> None:
    fmt = ollama.decompose(tokenizer)
    stops = ollama.stop_tokens(tokenizer, fmt, [tokenizer.eos_token_id])
    assert stops == ["<|im_end|>", "<|im_start|>"]
    text = ollama.modelfile("m-q8_0.gguf", fmt, stops, 4096)
    assert text.splitlines()[1:3] == [
        "FROM ./m-q8_0.gguf",
        'TEMPLATE """{{ range .Messages }}{{ if eq .Role "system" }}<|im_start|>system',
    ]
    assert '{{ end }}{{ end }}<|im_start|>assistant\n"""\n' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\nPARAMETER num_ctx 4096\n' in text
    assert "{{-" not in text  # trim markers would eat the wrappers' newlines


def _family_tokenizer(families: dict[str, Path], name: str) -> Any:
    from transformers import AutoTokenizer

    from genz_speak.chat_templates import PLAIN

    tok = AutoTokenizer.from_pretrained(families[name])
    if name == "llama_spm":  # a base model: prepare gives it the plain template
        tok.chat_template = PLAIN
    return tok


def test_wrappers_of_the_families_templates(families: dict[str, Path]) -> None:
    """The BOS a template starts with stays out of the wrappers (llama.cpp adds its own); Qwen3's assistant
    wrapper comes from mid-conversation, its generation prompt holds the empty think block; Gemma's
    system message is folded into the first user turn. Each reproduces its template on every probe."""
    plain = ollama.decompose(_family_tokenizer(families, "llama_spm"))
    assert plain.bos == "<s>" and plain.prefix["user"] == "<|user|>\n" and plain.suffix["user"] == "</s>\n"
    qwen3 = ollama.decompose(_family_tokenizer(families, "qwen3"))
    assert qwen3.prefix["assistant"] == "<|im_start|>assistant\n" and qwen3.default_system is None
    assert qwen3.generation_prompt == "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    gemma = ollama.decompose(_family_tokenizer(families, "gemma3"))
    assert (gemma.bos, gemma.fold, gemma.prefix["assistant"]) == ("<bos>", "\n\n", "<start_of_turn>model\n")
    llama3 = ollama.decompose(_family_tokenizer(families, "llama3"))
    assert "Today Date: 26 Jul 2024" in llama3.prefix["system"] and llama3.default_system == ""
    for name in ("llama_spm", "llama3", "qwen25", "qwen3", "gemma3"):
        tok = _family_tokenizer(families, name)
        assert ollama.check_roundtrip(tok, ollama.decompose(tok)) == len(ollama.PROBES), name
    assert "<bos>" not in ollama.go_template(gemma) and "<s>" not in ollama.go_template(plain)


_GO_RENDER = """package main

import ("encoding/json"; "os"; "strings"; "text/template")

type Message struct { Role string `json:"role"`; Content string `json:"content"` }

func main() {
	src, _ := os.ReadFile(os.Args[1])
	data, _ := os.ReadFile(os.Args[2])
	var convs [][]Message
	if err := json.Unmarshal(data, &convs); err != nil { panic(err) }
	tpl := template.Must(template.New("t").Parse(string(src)))
	var outs []string
	for _, c := range convs {
		var b strings.Builder
		if err := tpl.Execute(&b, map[string]any{"Messages": c}); err != nil { panic(err) }
		outs = append(outs, b.String())
	}
	out, _ := json.Marshal(outs)
	os.Stdout.Write(out)
}
"""


@pytest.mark.skipif(
    shutil.which("go") is None, reason="needs Go (Ollama's template engine is Go's text/template)"
)
@pytest.mark.parametrize("name", ["smollm2", "llama_spm", "llama3", "qwen25", "qwen3", "gemma3"])
def test_go_renders_the_template_as_jinja_does(
    name: str, tokenizer: Any, families: dict[str, Path], tmp_path: Path
) -> None:
    """Go's text/template, the engine Ollama runs TEMPLATE with, on the derived template: the same prompt
    as the model's Jinja template, less the BOS Ollama's llama.cpp puts first. Ollama puts the
    Modelfile's SYSTEM first when a chat has none."""
    from genz_speak.data.chat import render

    tok = tokenizer if name == "smollm2" else _family_tokenizer(families, name)
    fmt = ollama.decompose(tok)
    (tmp_path / "main.go").write_text(_GO_RENDER)
    (tmp_path / "t.tmpl").write_text(ollama.go_template(fmt))
    convs = [
        m
        if m[0]["role"] == "system" or fmt.default_system is None
        else [{"role": "system", "content": fmt.default_system}, *m]
        for m in ollama.PROBES
    ]
    (tmp_path / "c.json").write_text(json.dumps(convs))
    proc = subprocess.run(
        ["go", "run", "main.go", "t.tmpl", "c.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GOCACHE": str(tmp_path / "cache"), "GO111MODULE": "off"},
    )
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout)
    assert rendered == [render(tok, m).removeprefix(fmt.bos) for m in ollama.PROBES]
    assert all(render(tok, m).startswith(fmt.bos) for m in ollama.PROBES)


# -------------------------------------------------------------------------------------------------- card
def _evaluate_metrics() -> dict[str, Any]:
    stat = {"mean": 0.5, "std": 0.1, "n": 20, "ci_low": 0.4, "ci_high": 0.6}
    return {
        "judges": ["llm"],
        "llm": {
            "groups": {
                "base_model": {"genz_style": stat, "helpfulness": stat},
                "gen": {"genz_style": {**stat, "mean": 0.8}, "helpfulness": stat},
            },
            "paired": {"genz_style": {"mean": 0.3, "ci_low": 0.1, "ci_high": 0.45, "n": 20}},
        },
        "questions": 20,
    }


def test_card_reads_whatever_criteria_and_paired_differences_the_metrics_hold(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    params = parse(Params, {})
    metrics = {
        "prepare": json.loads((ROOT / "metrics/prepare.json").read_text()),
        "generate": {"rows": 200, "rejected": 9},
        "evaluate": _evaluate_metrics(),
    }
    gguf = {
        "q8_0": {
            "file": "m-q8_0.gguf",
            "bytes": 145_000_000,
            "max_logit_diff": 0.5,
            "tolerance": 3.0,
            "top1_agreement": 0.9876,
            "check": "llama.cpp",
        }
    }
    card.model_card(params, "genz-speak", metrics, gguf).save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert loaded.data.license == "apache-2.0" and loaded.data.pipeline_tag == "text-generation"
    text = loaded.text
    assert "| group | genz_style | helpfulness |" in text
    assert (
        "| Gen (fine-tuned answers) | 0.80 ± 0.10 [0.40, 0.60] (n=20) | 0.50 ± 0.10 [0.40, 0.60] (n=20) |"
        in text
    )
    assert "### LLM judge" in text
    assert "| genz_style | +0.300 | [+0.100, +0.450] | 20 |" in text
    assert "200 rows kept, 9 rejected" in text and "hand-written Gen Z corpus" in text
    assert "| `m-q8_0.gguf` | q8_0 | 145.0 MB | llama.cpp | 0.5 (3.0) | 98.8% |" in text
    assert "LoRA rank 16, alpha 32" in text


def test_card_without_evaluation_or_gguf(tmp_path: Path) -> None:
    params = parse(
        Params,
        {"prepare": {"base_model": str(tmp_path)}, "generate": {"teacher": "openai", "model": "gpt-5-mini"}},
    )
    text = str(card.model_card(params, "x", {}, {}))
    assert "No evaluation metrics were found" in text
    assert "## GGUF files" not in text and "ollama create" not in text
    assert "base_model:" not in text  # a local folder is no hub id
    assert "`gpt-5-mini` through the `openai` teacher" in text


# ------------------------------------------------------------------------------------------ config, card only
def test_export_config_checks() -> None:
    with pytest.raises(InputError, match=r"export: formats lists a format twice"):
        parse(Params, {"export": {"formats": ["f16", "f16"]}})
    with pytest.raises(InputError, match=r"export: modelfile_from 'q8_0' must be one of formats"):
        parse(Params, {"export": {"formats": ["f16"]}})
    with pytest.raises(InputError, match=r"export.formats.0"):
        parse(Params, {"export": {"formats": ["q4_k"]}})
    with pytest.raises(InputError, match=r"export.name"):
        parse(Params, {"export": {"name": "../escape"}})
    assert parse(Params, {"export": {"formats": []}}).export.formats == ()


def test_no_formats_writes_only_the_card(tmp_path: Path) -> None:
    from genz_speak.pipeline import export

    merged = tmp_path / "merge"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "params.yaml").write_text("export:\n  formats: []\n")
    (tmp_path / "heldout.jsonl").write_text("")
    cfg = parse(Params, {"export": {"formats": []}}).export
    paths = export.Paths(
        merged, tmp_path / "heldout.jsonl", tmp_path / "export", [], tmp_path / "params.yaml"
    )
    m = export.run(cfg, paths)
    assert m == {"formats": {}, "merged_bytes": 10, "files": ["README.md"], "passed": True}
    assert (tmp_path / "export/README.md").read_text().startswith("---\n")
    assert not (tmp_path / "export.tmp").exists()
