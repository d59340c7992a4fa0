"""The GGUF writer, its tokenizer metadata, the Ollama template derived from the chat template, and the
model card, on the tiny model (real files, reloaded through transformers and gguf-py's reader)."""

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
from genz_speak.export import card, gguf_file, ollama
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


def _write(model_dir: Path, path: Path, fmt: Any) -> dict[str, int]:
    model, tok = _load(model_dir)
    return gguf_file.write_gguf(
        model, tok, model_dir, path, fmt, name="tiny", license="apache-2.0", tokenizer_pre="smollm"
    )


def _logit_diff(model_dir: Path, path: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model, tok = _load(model_dir)
    other = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Why is the sky blue? Explain it to me like a friend would."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        return float((model(**ids).logits - other(**ids).logits).abs().max())


@pytest.fixture(scope="module")
def written(
    fp16_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, dict[str, int]]]:
    out = tmp_path_factory.mktemp("gguf")
    return {
        fmt: (out / f"tiny-{fmt}.gguf", _write(fp16_model, out / f"tiny-{fmt}.gguf", fmt))
        for fmt in ("f16", "q8_0")
    }


def test_f16_reloads_exactly_and_q8_0_closely(fp16_model: Path, written: dict[str, Any]) -> None:
    assert _logit_diff(fp16_model, written["f16"][0]) == 0.0  # float16 weights are stored as they are
    q8 = _logit_diff(fp16_model, written["q8_0"][0])
    assert 0.0 < q8 < 0.1
    assert written["f16"][1] == {"F16": 15, "F32": 5}  # 2 layers x 7 matrices + embeddings; norms in F32
    assert written["q8_0"][1] == {"F32": 5, "Q8_0": 15}
    assert written["q8_0"][0].stat().st_size < 0.7 * written["f16"][0].stat().st_size


def test_the_logit_check_sees_a_wrong_tensor_layout(
    fp16_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the q/k permutation, transformers' loader un-permutes a wrong layout: the check sees it."""
    monkeypatch.setattr(gguf_file, "_permute", lambda w, n_head: w)
    path = tmp_path / "unpermuted.gguf"
    _write(fp16_model, path, "f16")
    assert _logit_diff(fp16_model, path) > 1e-3


def test_metadata_holds_the_vocabulary_specials_and_chat_template(
    fp16_model: Path, written: dict[str, Any]
) -> None:
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fp16_model)
    config = json.loads((fp16_model / "config.json").read_text())
    reader = gguf.GGUFReader(written["q8_0"][0])

    def field(key: str) -> Any:
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama"
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert field("llama.block_count") == 2 and field("llama.attention.head_count_kv") == 2
    assert field("llama.rope.freq_base") == config["rope_parameters"]["rope_theta"]
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "smollm"
    tokens = field("tokenizer.ggml.tokens")
    assert (
        len(tokens) == config["vocab_size"]
        and tokens[tok.convert_tokens_to_ids("<|im_start|>")] == "<|im_start|>"
    )
    types = field("tokenizer.ggml.token_type")
    assert types[tok.convert_tokens_to_ids("<|im_end|>")] == gguf.TokenType.CONTROL
    assert types[tok.convert_tokens_to_ids("Ġthe")] == gguf.TokenType.NORMAL
    assert len(field("tokenizer.ggml.merges")) > 40000
    assert field("tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert field("tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert field("tokenizer.chat_template") == tok.chat_template
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied embeddings


def test_the_gguf_tokenizer_matches_the_folder(fp16_model: Path, written: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    from genz_speak.export.verify import TOKENIZER_PROBE, tokenizer_agreement
    from genz_speak.models import load_gguf_tokenizer

    path = written["f16"][0]
    ref = AutoTokenizer.from_pretrained(fp16_model)
    assert tokenizer_agreement(ref, load_gguf_tokenizer(path), [TOKENIZER_PROBE]) == []
    ref.chat_template = ref.chat_template.replace("<|im_start|>", "<|im_start|> ")
    problems = tokenizer_agreement(ref, load_gguf_tokenizer(path), [])
    assert problems[0] == "chat template differs"


def test_byte_level_vocab_pads_to_the_embedding_size(fp16_model: Path) -> None:
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fp16_model)
    tokens, types = gguf_file.byte_level_vocab(tok, len(tok) + 3)
    assert tokens[-3:] == [f"[PAD{len(tok) + i}]" for i in range(3)]
    assert types[-1] == gguf.TokenType.UNUSED
    with pytest.raises(InputError, match="embeds only"):
        gguf_file.byte_level_vocab(tok, len(tok) - 1)


def test_unsupported_models_fail_by_name(fp16_model: Path, tmp_path: Path) -> None:
    model, tok = _load(fp16_model)
    model.config.rope_parameters = {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}
    with pytest.raises(InputError, match=r"rope_type 'llama3'.*export\.formats: \[\]"):
        gguf_file.write_gguf(
            model, tok, fp16_model, tmp_path / "x.gguf", "f16", name="t", license="x", tokenizer_pre="x"
        )


def test_a_sentencepiece_tokenizer_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    spm = Tokenizer(
        models.BPE({"<unk>": 0, "a": 1, "b": 2, "ab": 3}, [("a", "b")], byte_fallback=True, unk_token="<unk>")
    )
    spm.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    with pytest.raises(InputError, match="not byte-level BPE"):
        gguf_file.byte_level_vocab(PreTrainedTokenizerFast(tokenizer_object=spm), 4)


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
        with pytest.raises(InputError, match="cannot render a assistant message"):
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
def test_go_renders_the_template_as_jinja_does(tokenizer: Any, tmp_path: Path) -> None:
    """Go's text/template, the engine Ollama runs TEMPLATE with, on the derived template: the same prompt
    as the model's Jinja template. Ollama puts the Modelfile's SYSTEM first when a chat has none."""
    fmt = ollama.decompose(tokenizer)
    (tmp_path / "main.go").write_text(_GO_RENDER)
    (tmp_path / "t.tmpl").write_text(ollama.go_template(fmt))
    convs = [
        m if m[0]["role"] == "system" else [{"role": "system", "content": fmt.default_system}, *m]
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
    assert rendered == [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in ollama.PROBES
    ]


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
    assert "| `m-q8_0.gguf` | q8_0 | 145.0 MB | 0.5 (3.0) | 98.8% |" in text
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
