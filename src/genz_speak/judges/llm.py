"""The LLM judge: a rubric scored 0-10 per criterion through any OpenAI-compatible server.

Replies are requested as strict JSON schema where the server supports it (a server that refuses
`response_format` is asked again without it, for the rest of the run) and are parsed and validated either
way; an invalid or out-of-range reply is retried, then recorded as a failed judgement. The question, the
answer and the reference reach the judge inside tags, as data to grade. Verdicts are cached by the whole
request and the server that answered it, so re-running evaluation costs nothing for unchanged answers,
and a verdict from another server (a stand-in, another model under the same name) is never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import openai

from genz_speak.cache import AppendLog, read_jsonl_tolerant
from genz_speak.config import LLMJudgeConfig
from genz_speak.endpoints import EarlyStop, EndpointPool
from genz_speak.io import loads
from genz_speak.judges import CRITERIA
from genz_speak.llm_client import (
    MalformedReply,
    call_with_retries,
    chat_request,
    chat_text,
    complete,
    describe,
    map_concurrent,
    strip_reasoning,
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
VERDICT_KEYS = frozenset({*CRITERIA, "rationale"})


class BadVerdict(MalformedReply):
    """A reply that is not a verdict: not JSON, other keys, or a score outside 0-10."""


def parse_verdict(text: str) -> dict[str, Any]:
    """Validate a judge reply; BadVerdict (retried) when it is not JSON, has keys other than the three
    criteria and the rationale, or a score out of range. A reasoning model's <think> block is dropped."""
    body, unfinished = strip_reasoning(text)
    if unfinished:
        raise BadVerdict(f"verdict: {unfinished}")
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        data = loads(body)  # JSON escapes decoded (a lone "\\ud83d" among them), then cleaned
    except json.JSONDecodeError as err:
        raise BadVerdict(f"verdict is not JSON: {body[:80]!r}") from err
    except ValueError as err:  # a key given twice
        raise BadVerdict(f"verdict gives a key twice: {err}") from err
    if not isinstance(data, dict):
        raise BadVerdict("verdict is not a JSON object")
    extra = sorted(set(data) - VERDICT_KEYS)
    if extra:
        raise BadVerdict(f"verdict has keys other than {sorted(VERDICT_KEYS)}: {extra}")
    verdict: dict[str, Any] = {}
    for c in CRITERIA:
        v = data.get(c)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 10:
            raise BadVerdict(f"verdict {c}={v!r} is not a number in [0, 10]")
        verdict[c] = float(v)
    verdict["rationale"] = str(data.get("rationale", ""))[:500]
    return verdict


# The user turn's layout: each text inside its own tags, which the rubric says hold data to grade, never
# instructions. `graded_answer` reads the answer back through the same constants (the stand-in judge does).
SECTIONS = ("question", "answer", "reference")
_REFERENCE_NOTE = "A correct reference answer (plain style; it says which facts are right):"
# Any of the section tags inside a text (closing or opening, spaced or cased oddly) would let the text end
# its own section and forge another; they are defused by a zero-width joiner after the "<".
_TAG = re.compile(rf"<(\s*/?\s*(?:{'|'.join(SECTIONS)})\b)", re.I)


def _defuse(text: str) -> str:
    return _TAG.sub("<\u200d\\1", text)


def _section(name: str, text: str) -> str:
    return f"<{name}>\n{_defuse(text)}\n</{name}>"


def judge_messages(question: str, answer: str, reference: str | None) -> list[dict[str, str]]:
    """The chat the judge is sent: the rubric, then the question, the answer and (reference-guided) the
    reference, each in its tags."""
    parts = [_section("question", question), _section("answer", answer)]
    if reference is not None:
        parts.append(f"{_REFERENCE_NOTE}\n{_section('reference', reference)}")
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": "\n\n".join(parts)}]


def graded_answer(user_turn: str) -> str:
    """The answer inside a user turn that `judge_messages` wrote (its tags defused, as the judge sees it)."""
    return user_turn.split("<answer>\n", 1)[-1].split("\n</answer>", 1)[0]


@dataclass(frozen=True)
class Judgement:
    scores: dict[str, float] | None  # criterion -> [0, 1]; None when the judgement failed
    rationale: str
    error: str | None
    cached: bool


def _refuses_schema(err: openai.BadRequestError) -> bool:
    text = describe(err).lower()
    return any(s in text for s in ("response_format", "json_schema", "json schema", "not supported"))


class LLMJudge:
    def __init__(self, cfg: LLMJudgeConfig, cache_path: Path):
        self.cfg = cfg
        self.pool = EndpointPool(
            [cfg.base_url],
            cfg.api_key_env,
            cfg.request_timeout,
            cfg.concurrency,
            role="evaluate.llm.base_url",
        )
        self.pool.preflight(cfg.model)  # a dead endpoint or a refused key: one line, before any answer
        self.cache_path = cache_path
        self.run_id = uuid.uuid4().hex[:12]
        self.requests = 0  # this run's
        self.tokens_in = 0
        self.tokens_out = 0
        self.faults: Counter[str] = Counter()  # failed requests by `fault_label`, this run
        self.use_schema = cfg.json_schema  # off for the rest of the run once the server refuses it
        self._schema_worked = False
        self._lock = threading.Lock()  # counts are updated from worker threads
        self.history: list[dict[str, Any]] = []  # the cache's records of the keys judged, this run included

    def _request(self, question: str, answer: str, reference: str | None) -> dict[str, Any]:
        schema = {"type": "json_schema", "json_schema": SCHEMA} if self.cfg.json_schema else None
        return chat_request(
            self.cfg.model,
            judge_messages(question, answer, reference),
            temperature=0.0,
            response_format=schema,
        )

    @staticmethod
    def _key(request: dict[str, Any]) -> str:
        # The whole request as configured (model, rubric, texts, sampling, response_format): the verdict
        # of a request resent without response_format is the same strict verdict.
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _send(self, log_file: AppendLog, key: str, request: dict[str, Any], spent: Counter[str]) -> Any:
        """One request to the endpoint, recorded before it goes out; a server that refuses
        response_format gets the request again without it (and never again with it this run)."""
        with self.pool.client() as endpoint:
            for _ in range(2):
                req = (
                    request
                    if self.use_schema
                    else {k: v for k, v in request.items() if k != "response_format"}
                )
                sent = {"key": key, "sent": 1, "endpoint": endpoint.identity, "run": self.run_id}
                log_file.write(sent, sync=False)  # not fsynced: the kernel keeps it if the process is killed
                with self._lock:
                    self.requests += 1
                    self.history.append(sent)
                try:
                    resp = complete(endpoint.client, **req)
                except openai.BadRequestError as err:
                    fallback = "response_format" in req and (_refuses_schema(err) or not self._schema_worked)
                    if not fallback:
                        raise
                    spent["HTTP 400"] += 1
                    with self._lock:
                        self.faults["HTTP 400"] += 1
                        announce, self.use_schema = self.use_schema, False
                    if announce:
                        log.warning(
                            "%s refused response_format (%s); asking without it", endpoint.url, describe(err)
                        )
                    continue
                self._schema_worked |= "response_format" in req
                return resp, endpoint.identity
        raise AssertionError("unreachable: the second try has no response_format")

    def _ask(self, key: str, request: dict[str, Any], log_file: AppendLog) -> dict[str, Any]:
        """Judge one request with retries; its record (verdict or error, tokens, faults), written."""
        spent: Counter[str] = Counter()  # this judgement's tokens, and its fallback faults
        who: list[str] = []

        def once() -> dict[str, Any]:
            resp, identity = self._send(log_file, key, request, spent)
            who.append(identity)
            # A completion whose verdict is unusable was paid for all the same.
            spent["tokens_in"] += getattr(resp.usage, "prompt_tokens", 0) or 0
            spent["tokens_out"] += getattr(resp.usage, "completion_tokens", 0) or 0
            return parse_verdict(chat_text(resp))

        res = call_with_retries(once, self.cfg.max_retries, stop=self.pool.stopping)
        faults = Counter(res.faults)
        faults.update({k: v for k, v in spent.items() if k.startswith("HTTP")})
        rec: dict[str, Any] = {"key": key, "endpoint": who[-1] if who else self.pool.endpoints[0].identity}
        rec |= res.value if res.value is not None else {"error": res.error or "failed"}
        rec |= {"tokens_in": spent["tokens_in"], "tokens_out": spent["tokens_out"], "faults": dict(faults)}
        rec |= {"retries": res.retries, "run": self.run_id}
        log_file.write(rec)
        with self._lock:
            self.faults.update(res.faults)
            self.tokens_in += spent["tokens_in"]
            self.tokens_out += spent["tokens_out"]
        return rec

    def judge(self, items: list[tuple[str, str, str]]) -> list[Judgement]:
        """Judge (question, answer, reference) triples; the reference is shown only when reference-guided."""
        requests = [self._request(q, a, r if self.cfg.reference_guided else None) for q, a, r in items]
        keys = [self._key(r) for r in requests]
        identities = self.pool.identities()
        cache: dict[str, dict[str, Any]] = {}
        wanted = set(keys)
        for rec in read_jsonl_tolerant(self.cache_path):
            if rec.get("key") in wanted and rec.get("endpoint") in identities:
                self.history.append(rec)
                if "genz_style" in rec:
                    cache[rec["key"]] = rec
        todo = list({k: r for k, r in zip(keys, requests, strict=True) if k not in cache}.items())
        errors: dict[str, str] = {}
        early = EarlyStop(max(8, 2 * self.cfg.concurrency), f"evaluate: judge {self.cfg.model}", "judgements")
        with AppendLog(self.cache_path) as log_file:

            def work(kv: tuple[str, dict[str, Any]]) -> None:
                rec = self._ask(kv[0], kv[1], log_file)
                with self._lock:
                    self.history.append(rec)
                    if "error" in rec:
                        errors[rec["key"]] = rec["error"]
                    else:
                        cache[rec["key"]] = rec
                early.observe(rec.get("error"))

            for _ in map_concurrent(work, todo, self.cfg.concurrency, stop=self.pool.stopping):
                pass
        todo_keys = {k for k, _ in todo}
        out = []
        for key in keys:
            rec = cache.get(key)
            if rec is None:
                out.append(Judgement(None, "", errors.get(key, "failed"), False))
            else:
                scores = {c: rec[c] / 10.0 for c in CRITERIA}
                out.append(Judgement(scores, rec["rationale"], None, key not in todo_keys))
        return out

    def usage(self) -> dict[str, Any]:
        """Requests, failed tries by kind, tokens and their estimated cost (evaluate.llm's prices), over
        every run whose requests built these judgements (the cache's records of them), this one included."""
        results = [r for r in self.history if "sent" not in r]
        tokens_in = sum(r.get("tokens_in", 0) for r in results)
        tokens_out = sum(r.get("tokens_out", 0) for r in results)
        faults: Counter[str] = Counter()
        for r in results:
            faults.update(r.get("faults", {}))
        cost = tokens_in / 1e6 * self.cfg.price_in_per_mtok + tokens_out / 1e6 * self.cfg.price_out_per_mtok
        return {
            "runs": len({r.get("run") for r in self.history}),
            "requests": sum(1 for r in self.history if "sent" in r),
            "faults": dict(faults),
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost_usd": round(cost, 4),
        }

    def close(self) -> None:
        self.pool.close()
