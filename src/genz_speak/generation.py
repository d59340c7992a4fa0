"""Batched chat generation with transformers, shared by the transformers teacher, evaluation and serving;
and the student's resumable answers to a question set."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genz_speak.cache import AppendLog, read_jsonl_tolerant
from genz_speak.config import Dtype
from genz_speak.data.chat import render, user_message
from genz_speak.models import device, inference_dtype, load_causal_lm, load_tokenizer, model_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str = "stop"  # "length" when max_new_tokens cut it off before an end-of-sequence token


class ChatGenerator:
    """A chat model loaded once; `generate` applies its chat template and decodes only the new tokens."""

    def __init__(self, model: str | Path, dtype: Dtype = "float32", loaded: PreTrainedModel | None = None):
        self.tokenizer = load_tokenizer(model, padding_side="left")  # left: new tokens follow each prompt
        self.model = loaded if loaded is not None else load_causal_lm(model, dtype)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        return {i for i in ids if i is not None}

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
            prompts = [render(self.tokenizer, conversations[i]) for i in idx]
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
            eos = self._eos_ids()
            for row, i in enumerate(idx):
                ids = new[row]
                n_out = int((ids != self.tokenizer.pad_token_id).sum())
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                # A row stops early only on an end-of-sequence token: without one it ran out of tokens.
                finish = "stop" if any(t in eos for t in ids.tolist()) else "length"
                results[i] = Completion(text, int(enc["attention_mask"][row].sum()), n_out, finish)
        return [results[i] for i in range(len(conversations))]


def answer_questions(
    model_dir: Path,
    questions: list[dict[str, Any]],
    cache_path: Path,
    *,
    max_new_tokens: int,
    repetition_penalty: float,
    batch_size: int,
) -> list[str]:
    """Greedy answers from the model in `model_dir` to Dolly-schema `questions`.

    Questions go in fixed batches (sorted by length, so each pads little) and every finished batch is
    appended to `cache_path`: a killed run resumes at the first unfinished batch, and since a batch is
    the same batch either way, resumed answers equal uninterrupted ones.
    """
    settings = json.dumps([model_fingerprint(model_dir), max_new_tokens, repetition_penalty])

    def key(q: dict[str, Any]) -> str:
        return hashlib.sha256(f"{settings}\x1f{q['id']}\x1f{user_message(q)}".encode()).hexdigest()

    cached = {r["key"]: r["text"] for r in read_jsonl_tolerant(cache_path)}
    order = sorted(range(len(questions)), key=lambda i: len(user_message(questions[i])))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    todo = [b for b in batches if not all(key(questions[i]) in cached for i in b)]
    log.info("answers from %s: %d of %d batches cached", model_dir, len(batches) - len(todo), len(batches))
    if todo:
        gen = ChatGenerator(model_dir, dtype=inference_dtype(model_dir))
        with AppendLog(cache_path) as log_file:
            for batch in todo:
                outs = gen.generate(
                    [[{"role": "user", "content": user_message(questions[i])}] for i in batch],
                    max_new_tokens=max_new_tokens,
                    repetition_penalty=repetition_penalty,
                    batch_size=len(batch),
                )
                for i, out in zip(batch, outs, strict=True):
                    cached[key(questions[i])] = out.text
                    log_file.write({"key": key(questions[i]), "id": questions[i]["id"], "text": out.text})
    return [cached[key(q)] for q in questions]
