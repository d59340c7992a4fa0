"""A Llama model folder as one GGUF file (f16 or q8_0), written with gguf-py: no llama.cpp build, no network.

The layout follows llama.cpp's own converter for Llama models: tensor names from gguf-py's name map, the
query and key projections permuted to GGML's rope layout, 1-D tensors (norms) kept in float32, the
vocabulary, merges, special tokens and chat template in the metadata.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from genz_speak.config import GgufFormat
from genz_speak.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

QUANT: dict[GgufFormat, gguf.GGMLQuantizationType] = {
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
FILE_TYPE: dict[GgufFormat, gguf.LlamaFileType] = {
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


def _check_supported(config: Any, model_dir: Path) -> None:
    """Fail, naming the folder, on what this writer does not convert (rather than write a wrong file)."""
    problems = []
    if config.model_type != "llama":
        problems.append(f"model_type {config.model_type!r} (only llama is converted)")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type {rope.get('rope_type')!r} (only default rope is converted)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("attention or MLP biases")
    if problems:
        raise InputError(
            f"{model_dir}: cannot be written as GGUF here: {'; '.join(problems)}; "
            "set export.formats: [] to skip the GGUF files"
        )


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half rope layout of a q/k projection -> GGML's interleaved pairs (transformers'
    GGUF loader applies the inverse)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def byte_level_vocab(tokenizer: PreTrainedTokenizerBase, n_vocab: int) -> tuple[list[str], list[int]]:
    """The token list and token types of a byte-level BPE tokenizer, `n_vocab` entries (ids the tokenizer
    lacks, up to the embedding size, become unused padding tokens).

    Added tokens are CONTROL when special (llama.cpp then renders them only on request and matches them
    whole), USER_DEFINED otherwise; the rest are NORMAL."""
    backend = tokenizer.backend_tokenizer.to_str()
    if '"ByteLevel"' not in backend or '"byte_fallback":true' in backend.replace(" ", ""):
        raise InputError(
            "export: the tokenizer is not byte-level BPE (SmolLM2, Llama 3, GPT-2 style); this writer does "
            "not convert sentencepiece vocabularies: set export.formats: [] to skip the GGUF files"
        )
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    if len(by_id) > n_vocab:
        raise InputError(f"export: the tokenizer has {len(by_id)} tokens, the model embeds only {n_vocab}")
    return tokens, [int(t) for t in types]


def _add_metadata(w: gguf.GGUFWriter, config: Any, fmt: GgufFormat, name: str, license: str) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_license(license)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_dimension_count(config.head_dim)
    w.add_vocab_size(config.vocab_size)
    w.add_file_type(FILE_TYPE[fmt])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(
    w: gguf.GGUFWriter, model_dir: Path, tokenizer: PreTrainedTokenizerBase, n_vocab: int, pre: str
) -> None:
    tokens, types = byte_level_vocab(tokenizer, n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    # gguf-py reads the merges, special token ids, add_bos/add_eos and chat_template.jinja from the folder.
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise InputError(f"{model_dir}/tokenizer.json: no BPE merges found")
    if special.chat_template is None:
        raise InputError(f"{model_dir}: no chat template (chat_template.jinja or tokenizer_config.json)")
    special.add_to_gguf(w, quiet=True)


def _tensors(
    model: PreTrainedModel, fmt: GgufFormat
) -> list[tuple[str, np.ndarray, gguf.GGMLQuantizationType]]:
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    out = []
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd, and a missing output.weight tells loaders so
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise InputError(f"export: no GGUF name for tensor {key!r} of a llama model")
        data = tensor.detach().float().cpu().numpy()
        if key.endswith("self_attn.q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif key.endswith("self_attn.k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        qtype = QUANT[fmt] if data.ndim > 1 else gguf.GGMLQuantizationType.F32
        try:
            data = gguf.quants.quantize(data, qtype)
        except (
            gguf.QuantError
        ):  # a row length q8_0's 32-wide blocks do not divide: float16, as llama.cpp does
            qtype = gguf.GGMLQuantizationType.F16
            data = gguf.quants.quantize(data, qtype)
        out.append((name, data, qtype))
    return out


def write_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_dir: Path,
    path: Path,
    fmt: GgufFormat,
    *,
    name: str,
    license: str,
    tokenizer_pre: str,
) -> dict[str, int]:
    """Write `model` (loaded from `model_dir`, whose tokenizer files supply the vocabulary) to `path`;
    returns how many tensors of each GGML type it holds."""
    config = model.config
    _check_supported(config, model_dir)
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_metadata(w, config, fmt, name, license)
    _add_tokenizer(w, model_dir, tokenizer, config.vocab_size, tokenizer_pre)
    types: Counter[str] = Counter()
    for tensor_name, data, qtype in _tensors(model, fmt):
        w.add_tensor(tensor_name, data, raw_dtype=qtype)
        types[qtype.name] += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    log.info("wrote %s (%s, %.1f MB)", path, fmt, path.stat().st_size / 1e6)
    return dict(sorted(types.items()))
