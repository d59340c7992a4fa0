"""The teacher interface and the prompt every LLM teacher sends."""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
    endpoint: str | None = None  # the identity of who answered (`Teacher.endpoints`)
    finish_reason: str | None = None  # why the reply ended: "stop", or "length" when max tokens cut it


class Journal(Protocol):
    """Where a teacher reports its work as it happens, from whichever thread does it (generate keeps the
    cache log): each request as it is sent (so a killed run's paid requests are counted), each result as
    it finishes."""

    def sent(self, id: str, endpoint: str) -> None: ...

    def done(self, result: TeacherResult) -> None: ...


class Teacher(Protocol):
    """Rewrites a batch of requests, reporting one result per request to the journal, in any order."""

    name: str

    def endpoints(self) -> frozenset[str]:
        """Who may have written a cached rewrite this run reuses: the identities of the servers it asks
        (URL and model description) or, offline, of the model or rules that write the rewrites."""
        ...

    def rewrite(self, requests: Iterable[TeacherRequest], journal: Journal) -> None: ...

    def stats(self) -> dict[str, Any]:
        """Teacher-specific counters for metrics/generate.json (the openai teacher: per endpoint)."""
        ...

    def close(self) -> None: ...


def _user_prompt(cfg: GenerateConfig, instruction: str, context: str, response: str) -> str:
    context = f"Context: {context}\n" if context else ""
    return cfg.prompt_template.format(instruction=instruction, context=context, response=response)


def prompt_fields(template: str, user_turn: str) -> dict[str, str] | None:
    """The fields (instruction, context, response) of a user turn that `cfg.prompt_template` rendered,
    read back through the same template; None when the turn does not fit it. Stand-in servers use it."""
    pattern, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern.append(re.escape(literal))
        if name is not None:
            pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
            seen.add(name)
    match = re.fullmatch("".join(pattern), user_turn, re.S)
    return match.groupdict() if match else None


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


RULES_VERSION = "2"  # bump when the rules stylizer changes, so cached rewrites are not reused


def is_llm(cfg: GenerateConfig) -> bool:
    """Whether the teacher is a language model (sent a chat) rather than an offline one."""
    return cfg.teacher not in ("corpus", "rules")


def teacher_name(cfg: GenerateConfig) -> str:
    return f"{cfg.teacher}:{cfg.model}" if is_llm(cfg) else cfg.teacher


def teacher_chats(
    cfg: GenerateConfig, rows: list[dict[str, Any]], corpus: Sequence[dict[str, Any]], exclude: frozenset[str]
) -> dict[str, list[dict[str, str]]]:
    """The chat each row's LLM teacher is sent, few-shot exemplars from the corpus included (none for the
    offline teachers, which send nothing)."""
    return {
        r["id"]: build_messages(
            cfg, r, pick_exemplars(cfg.fewshot, r, corpus, exclude) if is_llm(cfg) else ()
        )
        for r in rows
    }


def local_model_identity(kind: str, model: str) -> str:
    """Who writes the rewrites of a local model: its weights' content hash for a folder (so retraining
    it in place invalidates its cached rewrites), the id for a hub model."""
    from genz_speak.models import model_fingerprint

    folder = Path(model)
    return f"{kind}:{model_fingerprint(folder) if folder.is_dir() else model}"


def teacher_request(cfg: GenerateConfig, messages: list[dict[str, str]]) -> dict[str, Any]:
    """The chat completion request an LLM teacher makes for one row (the openai teacher sends exactly this;
    the local engines take the same sampling)."""
    from genz_speak.llm_client import chat_request

    s = cfg.sampling
    return chat_request(
        cfg.model,
        messages,
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=s.max_new_tokens,
        seed=s.seed,
    )


def rewrite_key(
    cfg: GenerateConfig, row: dict[str, Any], messages: list[dict[str, str]], corpus: dict[str, str]
) -> str:
    """Everything in the request that determines a rewrite: the teacher and, for an LLM teacher, the whole
    request it sends (model, system prompt, few-shot exemplars, the row's prompt, sampling and seed); the
    source row. Who answers it is recorded beside (`Teacher.endpoints`), not in the key."""
    if cfg.teacher == "rules":
        teacher: dict[str, Any] = {"teacher": "rules", "version": RULES_VERSION}
    elif cfg.teacher == "corpus":
        teacher = {"teacher": "corpus", "rewrite": corpus.get(row["id"]), "rules_version": RULES_VERSION}
    else:
        teacher = {"teacher": cfg.teacher, "request": teacher_request(cfg, messages)}
    source = {k: row[k] for k in ("instruction", "context", "response")}
    blob = json.dumps({"t": teacher, "s": source}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()
