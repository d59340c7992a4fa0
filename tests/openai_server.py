"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, with scripted replies and faults.

Each request takes the next action of a cycling script: "ok" (a real answer from `answer`), "429"
(Retry-After), "500", "stall" (sleeps past the client's timeout), "nonjson" (a 200 whose body is not
JSON), or any other string, sent back as the message content (e.g. an invalid verdict).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse


class ScriptedServer:
    def __init__(
        self, script: list[str], answer: Callable[[list[dict[str, str]]], str], stall_s: float = 3.0
    ):
        self.script = itertools.cycle(script)
        self.answer = answer
        self.stall_s = stall_s
        self.counts: Counter[str] = Counter()
        self.auth: set[str] = set()  # the Authorization headers seen, to check which key was sent
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)
        self.app.get("/v1/models")(self.models)

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "tests"}]}

    async def chat(self, request: Request) -> Any:
        import asyncio

        body = await request.json()
        with self.lock:
            self.auth.add(request.headers.get("authorization", ""))
            action = next(self.script)
            self.counts[action] += 1
            self.counts["requests"] += 1
        if action == "429":
            return JSONResponse(
                {"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "0"}
            )
        if action == "500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if action == "nonjson":
            return PlainTextResponse("<html>bad gateway</html>", status_code=200)
        if action == "stall":
            await asyncio.sleep(self.stall_s)
        content = self.answer(body["messages"]) if action in ("ok", "stall") else action
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run `app` on a free 127.0.0.1 port in a thread; yield its /v1 base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def verdict_for(messages: list[dict[str, str]]) -> str:
    """A judge's verdict that depends on the answer, so scores are checkable."""
    answer = messages[-1]["content"].split("Answer to grade:\n", 1)[-1]
    slang = any(w in answer.lower() for w in ("ngl", "fr", "bestie", "no cap", "lowkey"))
    return json.dumps(
        {"genz_style": 9 if slang else 1, "helpfulness": 6, "coherence": 7, "rationale": "scripted"}
    )
