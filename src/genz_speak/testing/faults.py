"""Fault injection for `genz-speak serve`: which requests get a fault, and how each fault is played on the
wire, as real servers and proxies misbehave (an ASGI middleware in front of the app, since some faults need
the raw connection)."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from genz_speak.cache import AppendLog

Fault = Literal[
    "429", "429-bare", "500", "502", "503", "stall", "nonjson", "badjson", "nochoices", "nullcontent",
    "truncated", "reset", "prose", "badkeys", "badrange",
    "429-negative", "429-nan", "429-date", "401-echo", "400-schema", "surrogate", "think", "length",
    "jsonblob", "unrelated", "extrakeys",
]  # fmt: skip
FAULTS: tuple[Fault, ...] = get_args(Fault)
# Faults played on the real answer, which the app computes first.
_ON_THE_ANSWER = frozenset({"surrogate", "think", "length"})
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class FaultPlan:
    """Which chat requests get a fault instead of an answer, and which fault (the kinds, in turn).

    By request count: every `every`th request (0: none). With `first` > 0, by conversation: the first
    `first` requests of every conversation (of every `every`th one, counted by first arrival) are faulted.
    """

    every: int = 0
    first: int = 0
    kinds: tuple[Fault, ...] = ("429", "500", "stall", "nonjson")
    stall_s: float = 30.0
    retry_after_s: float = 1.0
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._turn = 0  # the next kind, in turn
        self._lock = threading.Lock()
        self._conversations: dict[str, list[int]] = {}  # key -> [arrival index, requests so far]

    def next(self, conversation: str, inapplicable: frozenset[str] = frozenset()) -> Fault | None:
        """Count a request of `conversation`; return the fault it gets, if any (none when its turn's kind
        is `inapplicable` to this request: 400-schema to a request without response_format)."""
        with self._lock:
            self.counts["requests"] += 1
            if self.first:
                seen = self._conversations.setdefault(conversation, [len(self._conversations), 0])
                seen[1] += 1
                faulted = seen[0] % max(self.every, 1) == 0 and seen[1] <= self.first
            else:
                faulted = bool(self.every) and self.counts["requests"] % self.every == 0
            if not faulted or self.kinds[self._turn % len(self.kinds)] in inapplicable:
                return None
            fault = self.kinds[self._turn % len(self.kinds)]
            self._turn += 1
            self.counts[fault] += 1
            return fault


def completion(
    model: str, content: str | None, tokens_in: int, tokens_out: int, finish_reason: str = "stop"
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        },
    }


# The 200 replies of the content faults: a well-formed completion around a useless message.
_CONTENT_FAULTS: dict[str, str | None] = {
    "nullcontent": None,
    "prose": "This answer is clear and helpful; I would rate it highly on every criterion.",
    "badkeys": json.dumps({"style": 9, "helpful": 6, "coherent": 7, "rationale": "wrong keys"}),
    "badrange": json.dumps(
        {"genz_style": 42, "helpfulness": -1, "coherence": 7, "rationale": "out of range"}
    ),
    # A structured-output reply where text was asked for (a teacher fault; wrong keys to a judge).
    "jsonblob": json.dumps({"answer": "see the attached data", "confidence": 0.93, "sources": []}),
    # A fluent sentence about something else (a teacher fault; not a verdict to a judge).
    "unrelated": "The quarterly budget review moved to Thursday; bring the printed slides and your badge.",
    "extrakeys": json.dumps(
        {"genz_style": 8, "helpfulness": 7, "coherence": 9, "rationale": "fine", "confidence": 0.9}
    ),
}
_THINK = "<think>\nThe user wants this rewritten. Keep every fact; make it casual.\n</think>\n\n"
# The tail of an emoji cut in half by a proxy (a lone UTF-16 surrogate, as a JSON escape), and a NUL.
_CUT = "\ud83d\u0000"


def _on_the_answer(fault: str, data: dict[str, Any]) -> dict[str, Any]:
    """A real completion with `fault` played on its message."""
    choice = data["choices"][0]
    content = choice["message"]["content"] or ""
    if fault == "think":
        content = _THINK + content
    elif fault == "length":
        content, choice["finish_reason"] = content[: len(content) // 2], "length"
    else:  # surrogate: inside a verdict's rationale (the JSON stays valid), else at the end of the text
        try:
            verdict = json.loads(content)
            verdict["rationale"] += _CUT
            content = json.dumps(verdict)
        except (ValueError, TypeError, KeyError):
            content += " " + _CUT
    choice["message"]["content"] = content
    return data


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _reset(send: Send) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed server or a load balancer does."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)  # uvicorn's connection
    if transport is None:
        raise RuntimeError("the reset fault needs uvicorn (its send carries the connection)")
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FaultInjector:
    """ASGI middleware in front of the app: checks the key, records the request, and answers a chat
    request with its fault when the plan gives it one (some faults need the raw connection, which an
    ASGI app behind FastAPI's own middleware never sees)."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        plan: FaultPlan,
        model_id: str,
        api_key: str | None,
        record: Path | None,
    ):
        self.app, self.plan, self.model_id, self.api_key = app, plan, model_id, api_key
        self.record = AppendLog(record) if record else None
        self._record_lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/v1/stats":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None:  # every endpoint, as real servers do (/v1/models included)
            headers = dict(scope["headers"])
            if headers.get(b"authorization", b"") != f"Bearer {self.api_key}".encode():
                self.plan.counts["unauthorized"] += 1
                error = {"error": {"message": "invalid API key", "type": "invalid_request_error"}}
                await _respond(send, 401, json.dumps(error).encode(), "application/json")
                return
        if scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        try:
            request = json.loads(body)
            conversation = json.dumps(request.get("messages"), sort_keys=True)
        except (json.JSONDecodeError, AttributeError):
            request, conversation = None, body.decode(errors="replace")
        if self.record is not None and isinstance(request, dict):
            with self._record_lock:
                self.record.write(request)
        schema = isinstance(request, dict) and "response_format" in request
        fault = self.plan.next(
            hashlib.sha256(conversation.encode()).hexdigest(),
            frozenset() if schema else frozenset({"400-schema"}),
        )
        if fault is None or fault == "stall" or fault in _ON_THE_ANSWER:
            if fault == "stall":
                await asyncio.sleep(self.plan.stall_s)
            replayed = False

            async def replay() -> MutableMapping[str, Any]:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            if fault in _ON_THE_ANSWER:
                await self._play_on_answer(fault, scope, replay, send)
            else:
                await self.app(scope, replay, send)
            return
        await self._inject(fault, send, dict(scope["headers"]))

    async def _play_on_answer(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> None:
        reply: dict[str, Any] = {"status": 200, "body": b""}

        async def capture(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                reply["status"] = message["status"]
            elif message["type"] == "http.response.body":
                reply["body"] += message.get("body", b"")

        await self.app(scope, receive, capture)
        if reply["status"] != 200:
            await _respond(send, reply["status"], reply["body"], "application/json")
            return
        data = _on_the_answer(fault, json.loads(reply["body"]))
        await _respond(send, 200, json.dumps(data).encode(), "application/json")

    async def _inject(self, fault: Fault, send: Send, headers: dict[bytes, bytes]) -> None:
        empty = completion(self.model_id, "", 1, 1)
        if fault.startswith("429"):
            error = {"error": {"message": "rate limited (injected)", "type": "rate_limit_error"}}
            after = _retry_after(fault, self.plan.retry_after_s)
            await _respond(send, 429, json.dumps(error).encode(), "application/json", after)
        elif fault == "401-echo":  # as OpenAI does, the key sent is quoted back in the error
            key = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
            message = f"Incorrect API key provided: {key}. You can find your API key in your account."
            error = {
                "error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
            }
            await _respond(send, 401, json.dumps(error).encode(), "application/json")
        elif fault == "400-schema":  # vLLM's error shape: the message at the top level
            message = "response_format json_schema is not supported by this server (injected)"
            error = {
                "object": "error",
                "message": message,
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
            await _respond(send, 400, json.dumps(error).encode(), "application/json")
        elif fault in ("500", "503"):
            error = {"error": {"message": f"server error {fault} (injected)", "type": "server_error"}}
            await _respond(send, int(fault), json.dumps(error).encode(), "application/json")
        elif fault == "502":
            await _respond(send, 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        elif fault == "nonjson":
            await _respond(send, 200, b"<html>upstream error (injected)</html>", "text/plain")
        elif fault == "badjson":
            await _respond(send, 200, b"<html>upstream error (injected)</html>", "application/json")
        elif fault == "nochoices":
            await _respond(send, 200, json.dumps({**empty, "choices": []}).encode(), "application/json")
        elif fault == "truncated":
            full = json.dumps(empty).encode()
            length = str(len(full)).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            # Half the body, then return: the server closes a connection whose response is unfinished.
            await send({"type": "http.response.body", "body": full[: len(full) // 2], "more_body": True})
        elif fault == "reset":
            _reset(send)
        else:
            content = completion(self.model_id, _CONTENT_FAULTS[fault], 1, 1)
            await _respond(send, 200, json.dumps(content).encode(), "application/json")


def _retry_after(fault: str, seconds: float) -> list[tuple[bytes, bytes]]:
    """The Retry-After header of a 429 fault: none, a number, a nonsense one, or an HTTP date."""
    value = {
        "429": f"{seconds:g}",
        "429-negative": "-1",
        "429-nan": "nan",
        "429-date": email.utils.formatdate(time.time() + seconds, usegmt=True),
    }.get(fault)
    return [(b"retry-after", value.encode())] if value is not None else []
