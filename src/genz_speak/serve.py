"""A small OpenAI-compatible chat server over any local model folder (the merged model included).

    genz-speak serve models/merge --port 8000          # or: python -m genz_speak.serve models/merge

Endpoints: GET /v1/models, POST /v1/chat/completions (non-streaming). Try the model with any OpenAI
client (`base_url="http://127.0.0.1:8000/v1"`). `--latency S` adds a fixed delay to every answer,
`--max-concurrent N` answers at most N requests at a time (the rest queue), like a replica's fixed
capacity, and `--api-key-env NAME` refuses (401) any request without the key held in $NAME.

`genz-speak serve rules` loads no weights: it answers with the offline rules stylizer applied to the text
after the last "Answer:" of the last user message (the default prompt template's layout), a stand-in
teacher endpoint for dry runs of an openai-teacher config and for the generate throughput benchmark.
`genz-speak serve judge` is the LLM judge's stand-in: a rubric verdict, 9 for Gen Z style where the answer
has slang markers (ngl, fr, bestie, no cap, lowkey) and 1 where it has none, 6 for helpfulness, 7 for
coherence.

Fault injection, for testing clients: `--faults KINDS` (comma-separated, used in turn) with
`--fault-every N` answers every Nth request with a fault instead; with `--fault-first K`, faults follow
conversations (requests with the same messages) instead of the request count: the first K requests of
every conversation (of every Nth one, with `--fault-every N`) get a fault, so each row or verdict sees
exactly K of them whatever the client's concurrency. Kinds, as real servers and proxies misbehave:

    429          429 with Retry-After (--retry-after S)      429-bare   429 without Retry-After
    500 502 503  server errors (502: a proxy's HTML page)    stall      no answer for --stall S, then one
    nonjson      200, text/plain, an HTML page               badjson    200, "application/json", not JSON
    nochoices    200, a completion with "choices": []        nullcontent  200, "content": null
    truncated    the connection drops halfway through the body
    reset        the connection is reset (TCP RST) without a reply
    prose        200, content that is prose, not a JSON verdict (a judge fault; a teacher takes it as text)
    badkeys      200, a verdict with the wrong keys          badrange   200, a verdict with scores out of 0-10

GET /v1/stats counts requests, faults by kind, answers and refused keys; `--record FILE` appends every
chat request's body to FILE (JSONL), to see what a client really sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from genz_speak.io import AppendLog, free_port

Fault = Literal[
    "429", "429-bare", "500", "502", "503", "stall", "nonjson", "badjson", "nochoices", "nullcontent",
    "truncated", "reset", "prose", "badkeys", "badrange",
]  # fmt: skip
FAULTS: tuple[Fault, ...] = get_args(Fault)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


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
        self._cycle = itertools.cycle(self.kinds)
        self._lock = threading.Lock()
        self._conversations: dict[str, list[int]] = {}  # key -> [arrival index, requests so far]

    def next(self, conversation: str) -> Fault | None:
        """Count a request of `conversation`; return the fault it gets, if any."""
        with self._lock:
            self.counts["requests"] += 1
            if self.first:
                seen = self._conversations.setdefault(conversation, [len(self._conversations), 0])
                seen[1] += 1
                faulted = seen[0] % max(self.every, 1) == 0 and seen[1] <= self.first
            else:
                faulted = bool(self.every) and self.counts["requests"] % self.every == 0
            if not faulted:
                return None
            fault = next(self._cycle)
            self.counts[fault] += 1
            return fault


@dataclass(frozen=True)
class Answer:
    text: str
    tokens_in: int
    tokens_out: int


def _rules_answerer() -> Callable[[ChatRequest], Answer]:
    from genz_speak.teachers.rules import stylize

    def answer(req: ChatRequest) -> Answer:
        prompt = req.messages[-1].content
        source = prompt.rsplit("Answer:", 1)[-1].removesuffix("Rewritten answer:").strip()
        text = stylize(source, prompt)
        return Answer(text, len(prompt.split()), len(text.split()))

    return answer


_SLANG = re.compile(r"\b(ngl|fr|bestie|no cap|lowkey)\b", re.IGNORECASE)


def judge_verdict(answer: str) -> dict[str, Any]:
    """The stand-in judge's verdict on one answer."""
    slang = bool(_SLANG.search(answer))
    return {
        "genz_style": 9 if slang else 1,
        "helpfulness": 6,
        "coherence": 7,
        "rationale": "slang markers" if slang else "no slang markers",
    }


def _judge_answerer() -> Callable[[ChatRequest], Answer]:
    def answer(req: ChatRequest) -> Answer:
        # The LLM judge's layout: "Answer to grade:\n<answer>" and, reference-guided, the reference after it.
        prompt = req.messages[-1].content
        graded = prompt.split("Answer to grade:\n", 1)[-1].split("\n\nA correct reference answer", 1)[0]
        text = json.dumps(judge_verdict(graded))
        return Answer(text, len(prompt.split()), len(text.split()))

    return answer


def _model_answerer(model_dir: str | Path) -> Callable[[ChatRequest], Answer]:
    from genz_speak.generation import ChatGenerator
    from genz_speak.models import inference_dtype

    generator = ChatGenerator(model_dir, dtype=inference_dtype(model_dir))
    lock = threading.Lock()  # one generate at a time: the model is not re-entrant

    def answer(req: ChatRequest) -> Answer:
        with lock:
            out = generator.generate(
                [[m.model_dump() for m in req.messages]],
                max_new_tokens=req.max_completion_tokens or req.max_tokens or 256,
                temperature=req.temperature or 0.0,
                top_p=req.top_p if req.top_p is not None else 1.0,
                seed=req.seed or 0,
                batch_size=1,
            )[0]
        return Answer(out.text, out.tokens_in, out.tokens_out)

    return answer


def _completion(model: str, content: str | None, tokens_in: int, tokens_out: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
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
}


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


class _FaultInjector:
    """ASGI middleware in front of the app: checks the key, records the request, and answers a chat
    request with its fault when the plan gives it one (some faults need the raw connection, which an
    ASGI app behind FastAPI's own middleware never sees)."""

    def __init__(
        self, app: FastAPI, plan: FaultPlan, model_id: str, api_key: str | None, record: Path | None
    ):
        self.app, self.plan, self.model_id, self.api_key = app, plan, model_id, api_key
        self.record = AppendLog(record) if record else None
        self._record_lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        if self.api_key is not None:
            headers = dict(scope["headers"])
            if headers.get(b"authorization", b"") != f"Bearer {self.api_key}".encode():
                self.plan.counts["unauthorized"] += 1
                error = {"error": {"message": "invalid API key", "type": "invalid_request_error"}}
                await _respond(send, 401, json.dumps(error).encode(), "application/json")
                return
        try:
            request = json.loads(body)
            conversation = json.dumps(request.get("messages"), sort_keys=True)
        except (json.JSONDecodeError, AttributeError):
            request, conversation = None, body.decode(errors="replace")
        if self.record is not None and isinstance(request, dict):
            with self._record_lock:
                self.record.write(request)
        fault = self.plan.next(hashlib.sha256(conversation.encode()).hexdigest())
        if fault is None or fault == "stall":
            if fault == "stall":
                await asyncio.sleep(self.plan.stall_s)
            replayed = False

            async def replay() -> MutableMapping[str, Any]:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        await self._inject(fault, send)

    async def _inject(self, fault: Fault, send: Send) -> None:
        completion = _completion(self.model_id, "", 1, 1)
        if fault in ("429", "429-bare"):
            after = [(b"retry-after", f"{self.plan.retry_after_s:g}".encode())] if fault == "429" else []
            error = {"error": {"message": "rate limited (injected)", "type": "rate_limit_error"}}
            await _respond(send, 429, json.dumps(error).encode(), "application/json", after)
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
            await _respond(send, 200, json.dumps({**completion, "choices": []}).encode(), "application/json")
        elif fault == "truncated":
            full = json.dumps(completion).encode()
            length = str(len(full)).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            # Half the body, then return: the server closes a connection whose response is unfinished.
            await send({"type": "http.response.body", "body": full[: len(full) // 2], "more_body": True})
        elif fault == "reset":
            _reset(send)
        else:
            content = _completion(self.model_id, _CONTENT_FAULTS[fault], 1, 1)
            await _respond(send, 200, json.dumps(content).encode(), "application/json")


def create_app(
    model_dir: str | Path,
    faults: FaultPlan | None = None,
    latency_s: float = 0.0,
    max_concurrent: int = 0,
    api_key: str | None = None,
    record: Path | None = None,
) -> _FaultInjector:
    """The app over `model_dir` ("rules" and "judge": the weightless stand-ins); `max_concurrent` (0: no
    limit) bounds the requests answered at once; `api_key` (None: any) is the only key accepted."""
    if str(model_dir) == "rules":
        answer = _rules_answerer()
    elif str(model_dir) == "judge":
        answer = _judge_answerer()
    else:
        answer = _model_answerer(model_dir)
    model_id = Path(model_dir).name
    plan = faults or FaultPlan()
    capacity = asyncio.Semaphore(max_concurrent) if max_concurrent else contextlib.nullcontext()
    app = FastAPI(title="genz-speak serve")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "genz-speak"}]}

    @app.get("/v1/stats")
    async def stats() -> dict[str, int]:
        return dict(plan.counts)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> Any:
        if not req.messages:
            raise HTTPException(status_code=400, detail="messages must not be empty")
        async with capacity:
            if latency_s:
                await asyncio.sleep(latency_s)
            out = await run_in_threadpool(answer, req)
        plan.counts["answered"] += 1
        return _completion(model_id, out.text, out.tokens_in, out.tokens_out)

    return _FaultInjector(app, plan, model_id, api_key, record)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model_dir",
        type=Path,
        help='a local model folder (e.g. models/merge), or "rules" / "judge" (weightless stand-ins)',
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    p.add_argument("--max-concurrent", type=int, default=0, help="requests answered at once (0: no limit)")
    p.add_argument("--api-key-env", help="refuse requests without the key in this environment variable")
    p.add_argument("--record", type=Path, help="append every chat request's body to this JSONL file")
    p.add_argument("--fault-every", type=int, default=0, help="inject a fault into every Nth request")
    p.add_argument("--fault-first", type=int, default=0, help="fault the first K requests of a conversation")
    p.add_argument("--faults", default="429,500,stall,nonjson", help=f"kinds, in turn: {', '.join(FAULTS)}")
    p.add_argument("--stall", type=float, default=30.0, help="seconds a stalled request hangs")
    p.add_argument("--retry-after", type=float, default=1.0, help="the Retry-After of a 429 fault, seconds")


def run(args: argparse.Namespace) -> None:
    import uvicorn

    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    bad = [k for k in kinds if k not in FAULTS]
    if bad:
        raise SystemExit(f"--faults: unknown kind(s) {bad}; use {', '.join(FAULTS)}")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise SystemExit(f"--api-key-env: ${args.api_key_env} is not set")
    plan = FaultPlan(
        every=args.fault_every,
        first=args.fault_first,
        kinds=kinds,  # type: ignore[arg-type]
        stall_s=args.stall,
        retry_after_s=args.retry_after,
    )
    uvicorn.run(
        create_app(args.model_dir, plan, args.latency, args.max_concurrent, api_key, args.record),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


def launch(
    model_dir: str | Path,
    *options: str,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """`genz-speak serve MODEL_DIR OPTIONS` in a subprocess on 127.0.0.1 (`port`, or a free one); the
    process and its /v1 URL once it answers (benchmarks and tests use it as their real server)."""
    import httpx

    port = port or free_port()
    cmd = [sys.executable, "-m", "genz_speak.serve", str(model_dir), "--port", str(port), *options]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"genz-speak serve {model_dir} did not answer within {timeout:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    run(p.parse_args())


if __name__ == "__main__":
    main()
