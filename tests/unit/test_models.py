import json

from tokenizers import decoders

from genz_speak.models import EMBEDDED_GGUF, _as_the_gguf_says, embedded_student_dir
from genz_speak.testing.tiny import student_tokenizer


def test_the_embedded_tokenizer_takes_its_special_tokens_and_decoder_from_the_gguf() -> None:
    """transformers 5.17 builds SmolLM2's GGUF tokenizer with byte fallback, a sentencepiece decoder and
    <|im_start|> as EOS (seen on the GPU machine: answers ran past their end, the export refused the
    vocabulary). Given such a tokenizer, the file's own metadata puts it right."""
    tok = student_tokenizer()
    text = "no cap, the Eiffel Tower is 330 m tall 💅 ▁"
    ids = tok.encode(text)
    broken = student_tokenizer()
    broken.backend_tokenizer.model.byte_fallback = True
    broken.backend_tokenizer.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("▁", " "), decoders.ByteLevel()]
    )
    broken.eos_token = "<|im_start|>"
    broken.pad_token = None
    assert broken.eos_token_id == 1

    fixed = _as_the_gguf_says(broken, embedded_student_dir() / EMBEDDED_GGUF)
    assert (fixed.bos_token, fixed.eos_token, fixed.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert fixed.eos_token_id == 2
    backend = json.loads(fixed.backend_tokenizer.to_str())
    assert backend["model"]["byte_fallback"] is False and backend["decoder"]["type"] == "ByteLevel"
    assert fixed.encode(text) == ids and fixed.decode(ids) == text
