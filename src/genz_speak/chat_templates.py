"""The chat template a student is trained and served with (`prepare.chat_template`).

A chat model keeps its own. A base model has none (the original recipe's TinyLlama), and prepare gives it
one, written into the base model folder so that train, merge, the Modelfile and the model card all use it:

- `plain` (the default for base models): TinyLlama-1.1B-Chat's format, role markers as plain text and every
  turn ending in the tokenizer's EOS, with the BOS first. Only tokens the tokenizer already has, so no
  embedding row is new and LoRA on the projections learns the format (the EOS that ends the answer is part
  of the completion, hence trained: the model learns to stop). The BOS is in the template because chat
  rows are tokenized without special tokens while llama.cpp puts a BOS first at inference.
- `chatml`: `<|im_start|>`/`<|im_end|>` as new special tokens (one token per marker, a clean stop token),
  but two new embedding rows that start untrained: train then trains those rows too (peft's
  `trainable_token_indices`), only in this case.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from genz_speak.config import ChatTemplate
from genz_speak.errors import ParamError

log = logging.getLogger(__name__)

SOURCE_FILE = "template_source.json"  # in the base model folder: which template, which token rows are new

_BOS = "{% if bos_token %}{{ bos_token }}{% endif %}"
PLAIN = (
    _BOS + "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML = (
    _BOS + "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def assign(tokenizer: Any, model: Any, choice: ChatTemplate, name: str) -> dict[str, Any]:
    """Give `tokenizer` (and, for chatml, `model`'s embeddings) the chat template `choice` asks for;
    returns {"source": "model" | "plain" | "chatml", "new_token_ids": [...]} for SOURCE_FILE."""
    own = tokenizer.chat_template is not None
    if choice == "own" or (choice == "auto" and own):
        if not own:
            raise ParamError(
                "prepare.chat_template",
                f"own, but {name} has no chat template; use auto (or plain, chatml) to give a base model one",
            )
        return {"source": "model", "new_token_ids": []}
    source = "plain" if choice == "auto" else choice
    if tokenizer.eos_token is None:
        raise ParamError(
            "prepare.chat_template",
            f"{source} ends every turn in the tokenizer's EOS, and {name}'s tokenizer has none",
        )
    if own:
        log.warning("prepare.chat_template: %s replaces %s's own chat template", source, name)
    if source == "plain":
        tokenizer.chat_template = PLAIN
        return {"source": "plain", "new_token_ids": []}
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHATML_TOKENS)})
    tokenizer.eos_token = CHATML_TOKENS[1]  # generation stops at the end of the assistant's turn
    tokenizer.chat_template = CHATML
    new_ids = [i for i in tokenizer.convert_tokens_to_ids(list(CHATML_TOKENS)) if i >= before]
    if new_ids:
        # New rows start at the mean of the old ones (not random): the untrained tokens get no odd logits.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    eos = tokenizer.convert_tokens_to_ids(CHATML_TOKENS[1])
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = eos
    return {"source": "chatml", "new_token_ids": new_ids}


def write_source(model_dir: Path, info: dict[str, Any]) -> None:
    (model_dir / SOURCE_FILE).write_text(json.dumps(info) + "\n", encoding="utf-8")


def new_token_ids(model_dir: Path) -> list[int]:
    """The token rows prepare added to the base model (chatml), which training must make trainable."""
    path = Path(model_dir) / SOURCE_FILE
    return json.loads(path.read_text())["new_token_ids"] if path.is_file() else []
