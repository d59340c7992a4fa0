"""The teacher interface and the prompt every LLM teacher sends."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from genz_speak.config import FewShotConfig, GenerateConfig


@dataclass(frozen=True)
class TeacherRequest:
    id: str
    row: dict[str, Any]  # the source row (Dolly schema)
    messages: list[dict[str, str]]  # the chat the teacher answers


@dataclass(frozen=True)
class TeacherResult:
    id: str
    text: str | None  # None when the teacher gave up on this row
    error: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0
    teacher: str | None = None  # who wrote it, where a teacher has more than one source (corpus + rules)
    faults: dict[str, int] = field(default_factory=dict)  # failed requests by `llm_client.fault_label`


class Teacher(Protocol):
    """Rewrites a batch of requests; yields one result per request, in any order, as each finishes."""

    name: str

    def rewrite(self, requests: Iterable[TeacherRequest]) -> Iterator[TeacherResult]: ...

    def stats(self) -> dict[str, Any]:
        """Teacher-specific counters for metrics/generate.json (the openai teacher: per endpoint)."""
        ...

    def close(self) -> None: ...


def _user_prompt(cfg: GenerateConfig, instruction: str, context: str, response: str) -> str:
    context = f"Context: {context}\n" if context else ""
    return cfg.prompt_template.format(instruction=instruction, context=context, response=response)


def pick_exemplars(
    cfg: FewShotConfig, row: dict[str, Any], corpus: Sequence[dict[str, Any]], exclude: frozenset[str]
) -> list[dict[str, Any]]:
    """`cfg.count` corpus rows to show the teacher before `row`: never the row itself nor an excluded
    question (the held-out ones), from the row's category first when `by_category`. The choice is a pure
    function of the seed, the row and the corpus, and differs from row to row, so no one example's
    opening becomes the teacher's template."""
    pool = [r for r in corpus if r["id"] != row["id"] and r["id"] not in exclude]

    def rank(r: dict[str, Any]) -> tuple[bool, str]:
        other = cfg.by_category and r["category"] != row["category"]
        return other, hashlib.sha256(f"{cfg.seed}\x1f{row['id']}\x1f{r['id']}".encode()).hexdigest()

    return sorted(pool, key=rank)[: cfg.count]


def build_messages(
    cfg: GenerateConfig, row: dict[str, Any], exemplars: Sequence[dict[str, Any]] = ()
) -> list[dict[str, str]]:
    """The chat an LLM teacher answers: the system prompt, each exemplar as a worked turn (its question
    and reference in the prompt template, its hand-written rewrite as the reply), then the row itself."""
    messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    for ex in exemplars:
        messages += [
            {"role": "user", "content": _user_prompt(cfg, ex["instruction"], "", ex["reference"])},
            {"role": "assistant", "content": ex["genz"]},
        ]
    messages.append(
        {
            "role": "user",
            "content": _user_prompt(cfg, row["instruction"], row.get("context", ""), row["response"]),
        }
    )
    return messages
