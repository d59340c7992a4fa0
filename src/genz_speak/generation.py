"""Batched chat generation with transformers, shared by the transformers teacher, evaluation and serving;
and the student's resumable answers to a question set."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genz_speak.cache import AppendLog, read_jsonl_tolerant
from genz_speak.config import DecodingConfig, Dtype
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

    @property
    def ended(self) -> bool:
        """The model ended its turn itself, before max_new_tokens cut it."""
        return self.finish_reason == "stop"


class _AnswerOnly:
    """A logits processor applied to the generated tokens alone, as if the prompt were not there (what
    `count_prompt: false` means for the n-gram ban; the repetition penalty has `prompt_ignore_length`)."""

    def __init__(self, inner: Any, prompt_length: int):
        self.inner, self.prompt_length = inner, prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        return self.inner(input_ids[:, self.prompt_length :], scores)


def decoding_kwargs(
    *,
    prompt_length: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    count_prompt: bool = True,
) -> dict[str, Any]:
    """`generate` keyword arguments for these settings, for prompts (left-padded) `prompt_length` long.

    The penalty and the n-gram ban are built as logits processors here rather than left to `generate`,
    so that `count_prompt=False` can leave the prompt out of both."""
    from transformers import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    processors: list[Any] = []
    if repetition_penalty != 1.0:
        ignore = None if count_prompt else prompt_length
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty, prompt_ignore_length=ignore))
    if no_repeat_ngram_size:
        ban = NoRepeatNGramLogitsProcessor(no_repeat_ngram_size)
        processors.append(ban if count_prompt else _AnswerOnly(ban, prompt_length))
    sample = temperature > 0
    return {
        "do_sample": sample,
        "temperature": temperature if sample else None,
        "top_p": top_p if sample else None,
        "top_k": None,
        "logits_processor": LogitsProcessorList(processors),
    }


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
        no_repeat_ngram_size: int = 0,
        count_prompt: bool = True,
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
            prompt_length = enc["input_ids"].shape[1]
            settings = decoding_kwargs(
                prompt_length=prompt_length,
                temperature=temperature,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size,
                count_prompt=count_prompt,
            )
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **settings
                )
            new = gen[:, prompt_length:]
            stops = self._eos_ids()
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                # The turn ends at its first stop token; what follows it is padding (the same id, often).
                # A row without one ran out of tokens.
                end = next((k for k, t in enumerate(ids) if t in stops), None)
                n_out = len(ids) if end is None else end
                text = self.tokenizer.decode(ids[:n_out], skip_special_tokens=True).strip()
                finish = "length" if end is None else "stop"
                results[i] = Completion(text, int(enc["attention_mask"][row].sum()), n_out, finish)
        return [results[i] for i in range(len(conversations))]


@dataclass(frozen=True)
class Answer:
    text: str
    ended: bool  # ended its turn itself, before decoding.max_new_tokens
    tokens: int  # tokens generated, the stop token not counted


def answer_questions(
    model_dir: Path,
    questions: list[dict[str, Any]],
    cache_path: Path,
    *,
    decoding: DecodingConfig,
    batch_size: int,
) -> list[Answer]:
    """The answers of the model in `model_dir` to Dolly-schema `questions`, decoded as `decoding` says.

    Questions go in fixed batches (sorted by length, so each pads little) and every finished batch is
    appended to `cache_path`: a killed run resumes at the first unfinished batch, and since a batch is
    the same batch either way (sampling seeds each batch alike), resumed answers equal uninterrupted ones.
    """
    settings = json.dumps([model_fingerprint(model_dir), asdict(decoding)], sort_keys=True)

    def key(q: dict[str, Any]) -> str:
        return hashlib.sha256(f"{settings}\x1f{q['id']}\x1f{user_message(q)}".encode()).hexdigest()

    cached = {
        r["key"]: Answer(r["text"], r["ended"], r["tokens"])
        for r in read_jsonl_tolerant(cache_path)
        if "ended" in r  # rows written before answers recorded their ending are answered again
    }
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
                    max_new_tokens=decoding.max_new_tokens,
                    temperature=decoding.temperature,
                    top_p=decoding.top_p,
                    repetition_penalty=decoding.repetition_penalty,
                    no_repeat_ngram_size=decoding.no_repeat_ngram_size,
                    count_prompt=decoding.count_prompt,
                    seed=decoding.seed,
                    batch_size=len(batch),
                )
                for i, out in zip(batch, outs, strict=True):
                    answer = Answer(out.text, out.ended, out.tokens_out)
                    cached[key(questions[i])] = answer
                    log_file.write({"key": key(questions[i]), "id": questions[i]["id"], **asdict(answer)})
    return [cached[key(q)] for q in questions]
