"""A small OpenAI-compatible chat server over any local model folder (the merged model included).

    genz-speak serve models/merge --port 8000          # or: python -m genz_speak.serve models/merge

Endpoints: GET /v1/models, POST /v1/chat/completions (non-streaming). Try the model with any OpenAI
client (`base_url="http://127.0.0.1:8000/v1"`). For testing clients, `--fault-every N --faults
429,500,stall,nonjson` answers every Nth request with the next fault of the list instead,
`--latency S` adds a fixed delay to every answer, and `--max-concurrent N` answers at most N requests at
a time (the rest queue), like a replica's fixed capacity; GET /v1/stats counts requests and faults.

`genz-speak serve rules` loads no weights: it answers with the offline rules stylizer applied to the text
after the last "Answer:" of the last user message (the default prompt template's layout), a stand-in
teacher endpoint for dry runs of an openai-teacher config and for the generate throughput benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from genz_speak.io import free_port

Fault = Literal["429", "500", "stall", "nonjson"]


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
    every: int = 0  # 0: no faults
    kinds: tuple[Fault, ...] = ("429", "500", "stall", "nonjson")
    stall_s: float = 30.0
    retry_after_s: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._cycle = itertools.cycle(self.kinds)
        self._lock = threading.Lock()

    def next(self) -> Fault | None:
        """Count a request; return the fault it gets, if any."""
        with self._lock:
            self.counts["requests"] += 1
            if self.every and self.counts["requests"] % self.every == 0:
                fault = next(self._cycle)
                self.counts[fault] += 1
                return fault
            return None


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


def create_app(
    model_dir: str | Path, faults: FaultPlan | None = None, latency_s: float = 0.0, max_concurrent: int = 0
) -> FastAPI:
    """The app over `model_dir`, or over the rules stylizer when `model_dir` is "rules"; `max_concurrent`
    (0: no limit) bounds the requests answered at once."""
    answer = _rules_answerer() if str(model_dir) == "rules" else _model_answerer(model_dir)
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
        fault = plan.next()
        if fault == "429":
            return JSONResponse(
                {"error": {"message": "rate limited (injected)", "type": "rate_limit"}},
                status_code=429,
                headers={"Retry-After": str(plan.retry_after_s)},
            )
        if fault == "500":
            return JSONResponse({"error": {"message": "server error (injected)"}}, status_code=500)
        if fault == "nonjson":
            return PlainTextResponse("<html>502 bad gateway (injected)</html>", status_code=200)
        if fault == "stall":
            await asyncio.sleep(plan.stall_s)
        if not req.messages:
            raise HTTPException(status_code=400, detail="messages must not be empty")
        async with capacity:
            if latency_s:
                await asyncio.sleep(latency_s)
            out = await run_in_threadpool(answer, req)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": out.tokens_in,
                "completion_tokens": out.tokens_out,
                "total_tokens": out.tokens_in + out.tokens_out,
            },
        }

    return app


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model_dir", type=Path, help='a local model folder (e.g. models/merge), or "rules" (no weights)'
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    p.add_argument("--fault-every", type=int, default=0, help="inject a fault into every Nth request")
    p.add_argument("--faults", default="429,500,stall,nonjson", help="fault kinds, in turn")
    p.add_argument("--stall", type=float, default=30.0, help="seconds a stalled request hangs")
    p.add_argument("--max-concurrent", type=int, default=0, help="requests answered at once (0: no limit)")


def run(args: argparse.Namespace) -> None:
    import uvicorn

    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    bad = [k for k in kinds if k not in ("429", "500", "stall", "nonjson")]
    if bad:
        raise SystemExit(f"--faults: unknown kind(s) {bad}; use 429, 500, stall, nonjson")
    plan = FaultPlan(every=args.fault_every, kinds=kinds, stall_s=args.stall)  # type: ignore[arg-type]
    uvicorn.run(
        create_app(args.model_dir, plan, args.latency, args.max_concurrent),
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
