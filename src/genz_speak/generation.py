"""Batched chat generation with transformers, shared by the transformers teacher, evaluation and serving."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from genz_speak.config import Dtype
from genz_speak.models import device, load_causal_lm, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int
    tokens_out: int


class ChatGenerator:
    """A chat model loaded once; `generate` applies its chat template and decodes only the new tokens."""

    def __init__(self, model: str | Path, dtype: Dtype = "float32", loaded: PreTrainedModel | None = None):
        self.tokenizer = load_tokenizer(model, padding_side="left")  # left: new tokens follow each prompt
        self.model = loaded if loaded is not None else load_causal_lm(model, dtype)

    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        batch_size: int = 8,
    ) -> list[Completion]:
        import torch

        # Sort by length so each batch pads little; results are put back in input order.
        order = sorted(range(len(conversations)), key=lambda i: len(str(conversations[i])))
        results: dict[int, Completion] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            prompts = [
                self.tokenizer.apply_chat_template(
                    conversations[i], tokenize=False, add_generation_prompt=True
                )
                for i in idx
            ]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                device()
            )
            torch.manual_seed(seed + start)
            sample = temperature > 0
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_p=top_p if sample else None,
                    top_k=None,
                    repetition_penalty=repetition_penalty,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                ids = new[row]
                n_out = int((ids != self.tokenizer.pad_token_id).sum())
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                results[i] = Completion(text, int(enc["attention_mask"][row].sum()), n_out)
        return [results[i] for i in range(len(conversations))]
