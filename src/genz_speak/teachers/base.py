"""The teacher interface and the prompt every LLM teacher sends."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from genz_speak.config import GenerateConfig


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
    faults: dict[str, int] = field(default_factory=dict)  # failed requests by `llm_client.fault_label`


class Teacher(Protocol):
    """Rewrites a batch of requests; yields one result per request, in any order, as each finishes."""

    name: str

    def rewrite(self, requests: Iterable[TeacherRequest]) -> Iterator[TeacherResult]: ...

    def stats(self) -> dict[str, Any]:
        """Teacher-specific counters for metrics/generate.json (the openai teacher: per endpoint)."""
        ...

    def close(self) -> None: ...


def build_messages(cfg: GenerateConfig, row: dict[str, Any]) -> list[dict[str, str]]:
    context = f"Context: {row['context']}\n" if row.get("context") else ""
    user = cfg.prompt_template.format(
        instruction=row["instruction"], context=context, response=row["response"]
    )
    messages = [{"role": "user", "content": user}]
    if cfg.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return messages
