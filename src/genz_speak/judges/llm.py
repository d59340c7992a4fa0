"""The LLM judge: a rubric scored 0-10 per criterion through any OpenAI-compatible server.

Replies are requested as strict JSON schema where the server supports it and are parsed and validated
either way; an invalid or out-of-range reply is retried, then recorded as a failed judgement. Verdicts
are cached by (judge model, rubric, question, answer), so re-running evaluation costs nothing for
unchanged answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from genz_speak.config import LLMJudgeConfig
from genz_speak.io import AppendLog, read_jsonl_tolerant
from genz_speak.judges import CRITERIA
from genz_speak.llm_client import (
    MalformedReply,
    call_with_retries,
    chat_request,
    chat_text,
    complete,
    make_client,
    map_concurrent,
)

log = logging.getLogger(__name__)

# The rubric every judge is held to (docs/judge_rubric.md explains it); sent word for word.
RUBRIC = (resources.files("genz_speak.judges") / "rubric.txt").read_text(encoding="utf-8").strip()

SCHEMA = {
    "name": "verdict",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {
            **{c: {"type": "integer", "minimum": 0, "maximum": 10} for c in CRITERIA},
            "rationale": {"type": "string"},
        },
        "required": [*CRITERIA, "rationale"],
        "additionalProperties": False,
    },
}


class BadVerdict(MalformedReply):
    """A reply that is not a verdict: not JSON, other keys, or a score outside 0-10."""


def parse_verdict(text: str) -> dict[str, Any]:
    """Validate a judge reply; BadVerdict (retried) when it is not JSON or out of range."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise BadVerdict(f"verdict is not JSON: {body[:80]!r}") from err
    if not isinstance(data, dict):
        raise BadVerdict("verdict is not a JSON object")
    verdict: dict[str, Any] = {}
    for c in CRITERIA:
        v = data.get(c)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 10:
            raise BadVerdict(f"verdict {c}={v!r} is not a number in [0, 10]")
        verdict[c] = float(v)
    verdict["rationale"] = str(data.get("rationale", ""))[:500]
    return verdict


# The user turn's layout; `graded_answer` reads it back (the test servers' stand-in judge does).
_ANSWER = "\n\nAnswer to grade:\n"
_REFERENCE = "\n\nA correct reference answer (plain style; it says which facts are right):\n"


def judge_messages(question: str, answer: str, reference: str | None) -> list[dict[str, str]]:
    """The chat the judge is sent: the rubric, then the question, the answer and (reference-guided) the
    reference."""
    user = f"Question:\n{question}{_ANSWER}{answer}"
    if reference is not None:
        user += f"{_REFERENCE}{reference}"
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]


def graded_answer(user_turn: str) -> str:
    """The answer inside a user turn that `judge_messages` wrote."""
    return user_turn.split(_ANSWER, 1)[-1].split(_REFERENCE, 1)[0]


@dataclass(frozen=True)
class Judgement:
    scores: dict[str, float] | None  # criterion -> [0, 1]; None when the judgement failed
    rationale: str
    error: str | None
    cached: bool


class LLMJudge:
    def __init__(self, cfg: LLMJudgeConfig, cache_path: Path):
        self.cfg = cfg
        self.client = make_client(cfg.base_url, cfg.api_key_env, cfg.request_timeout)
        self.cache_path = cache_path
        self.cache = {rec["key"]: rec for rec in read_jsonl_tolerant(cache_path)}
        self.requests = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.faults: Counter[str] = Counter()  # failed requests by `fault_label`
        self._lock = threading.Lock()  # requests, token and fault counts are updated from worker threads

    def _key(self, question: str, answer: str, reference: str | None) -> str:
        blob = json.dumps([self.cfg.model, RUBRIC, question, answer, reference], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _ask(self, item: tuple[str, str, str | None]) -> tuple[dict[str, Any] | None, str | None]:
        question, answer, reference = item
        request = chat_request(
            self.cfg.model,
            judge_messages(question, answer, reference),
            temperature=0.0,
            response_format={"type": "json_schema", "json_schema": SCHEMA} if self.cfg.json_schema else None,
        )

        def once() -> dict[str, Any]:
            with self._lock:
                self.requests += 1
            resp = complete(self.client, **request)  # a reply that is not a chat completion raises here
            with self._lock:  # a completion whose verdict is unusable was paid for all the same
                self.tokens_in += getattr(resp.usage, "prompt_tokens", 0) or 0
                self.tokens_out += getattr(resp.usage, "completion_tokens", 0) or 0
            return parse_verdict(chat_text(resp))

        res = call_with_retries(once, self.cfg.max_retries)
        with self._lock:
            self.faults.update(res.faults)
        return res.value, res.error

    def judge(self, items: list[tuple[str, str, str]]) -> list[Judgement]:
        """Judge (question, answer, reference) triples; the reference is shown only when reference-guided."""
        keyed = [
            (
                self._key(q, a, r if self.cfg.reference_guided else None),
                (q, a, r if self.cfg.reference_guided else None),
            )
            for q, a, r in items
        ]
        todo = list({k: it for k, it in keyed if k not in self.cache}.items())
        errors: dict[str, str] = {}
        with AppendLog(self.cache_path) as log_file:
            for (key, _), (verdict, error) in map_concurrent(
                lambda kv: self._ask(kv[1]), todo, self.cfg.concurrency
            ):
                if verdict is None:
                    errors[key] = error or "failed"
                    continue
                rec = {"key": key, **verdict}
                log_file.write(rec)
                self.cache[key] = rec
        out = []
        todo_keys = {k for k, _ in todo}
        for key, _ in keyed:
            rec = self.cache.get(key)
            if rec is None:
                out.append(Judgement(None, "", errors.get(key, "failed"), False))
            else:
                out.append(
                    Judgement(
                        {c: rec[c] / 10.0 for c in CRITERIA}, rec["rationale"], None, key not in todo_keys
                    )
                )
        return out

    def usage(self) -> dict[str, Any]:
        """Requests, failed tries by kind, tokens and their estimated cost (evaluate.llm's prices)."""
        cost = (
            self.tokens_in / 1e6 * self.cfg.price_in_per_mtok
            + self.tokens_out / 1e6 * self.cfg.price_out_per_mtok
        )
        return {
            "model": self.cfg.model,
            "requests": self.requests,
            "faults": dict(self.faults),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": round(cost, 4),
        }

    def close(self) -> None:
        self.client.close()
