"""A small OpenAI-compatible chat server over any local model folder (the merged model included).

    genz-speak serve models/merge --port 8000    # or: python -m genz_speak.testing.serve models/merge

A fixture for tests and benchmarks (and dry runs), not a way to deploy the model: it needs the `serve`
extra (fastapi, uvicorn).

Endpoints: GET /v1/models, POST /v1/chat/completions (non-streaming). Try the model with any OpenAI
client (`base_url="http://127.0.0.1:8000/v1"`). `--latency S` adds a fixed delay to every answer,
`--max-concurrent N` answers at most N requests at a time (the rest queue), like a replica's fixed
capacity, and `--api-key-env NAME` refuses (401) any request without the key held in $NAME.

`genz-speak serve rules` loads no weights: it answers with the offline rules stylizer applied to the
source answer in the last user message, read back through `generate.prompt_template` (of `--params`), the
template the openai teacher wrote it with; a stand-in teacher endpoint for dry runs of an openai-teacher
config and for the generate throughput benchmark. `genz-speak serve judge` is the LLM judge's stand-in:
it reads the answer back from the judge's own prompt layout and gives a rubric verdict, 9 for Gen Z style
where the answer has slang markers (ngl, fr, bestie, no cap, lowkey) and 1 where it has none, 6 for
helpfulness, 7 for coherence.

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
    prose        200, prose, not a JSON verdict (a judge fault; a teacher rejects it as no rewrite)
    badkeys      200, a verdict with the wrong keys          badrange   200, a verdict with scores out of 0-10
    429-negative 429 with Retry-After: -1                    429-nan    429 with Retry-After: nan
    429-date     429 with Retry-After as an HTTP date (--retry-after S from now)
    401-echo     401 whose message quotes the key the client sent (as OpenAI's does)
    400-schema   400 (vLLM's error shape) to a request with response_format; others are answered
    surrogate    the real answer with a lone UTF-16 surrogate and a NUL in it (an emoji a proxy cut)
    think        the real answer after a <think>...</think> block (a reasoning model)
    length       the first half of the real answer, finish_reason "length" (max_tokens cut it off)
    jsonblob     200, a JSON object instead of text          unrelated  200, a sentence about something else
    extrakeys    200, a verdict with an extra key

GET /v1/stats counts requests, faults by kind, answers and refused keys; `--record FILE` appends every
chat request's body to FILE (JSONL), to see what a client really sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from genz_speak.io import free_port
from genz_speak.testing.faults import FAULTS, FaultInjector, FaultPlan, completion


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


@dataclass(frozen=True)
class Answer:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str = "stop"


def _rules_answerer(params: Path) -> Callable[[ChatRequest], Answer]:
    from genz_speak.config import GenerateConfig
    from genz_speak.params import load_params
    from genz_speak.teachers.base import prompt_fields
    from genz_speak.teachers.rules import stylize

    template = (load_params(params).generate if params.is_file() else GenerateConfig()).prompt_template

    def answer(req: ChatRequest) -> Answer:
        prompt = req.messages[-1].content
        fields = prompt_fields(template, prompt)
        source = fields["response"] if fields else prompt  # a turn of another layout: restyle all of it
        text = stylize(source.strip(), prompt)
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
    from genz_speak.judges.llm import graded_answer

    def answer(req: ChatRequest) -> Answer:
        prompt = req.messages[-1].content
        text = json.dumps(judge_verdict(graded_answer(prompt)))
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
        return Answer(out.text, out.tokens_in, out.tokens_out, out.finish_reason)

    return answer


def create_app(
    model_dir: str | Path,
    faults: FaultPlan | None = None,
    latency_s: float = 0.0,
    max_concurrent: int = 0,
    api_key: str | None = None,
    record: Path | None = None,
    params: Path = Path("params.yaml"),
    served_model_name: str | None = None,
) -> FaultInjector:
    """The app over `model_dir` ("rules" and "judge": the weightless stand-ins); `max_concurrent` (0: no
    limit) bounds the requests answered at once; `api_key` (None: any) is the only key accepted;
    `served_model_name` is the model id it lists and answers as (as vLLM's flag of that name)."""
    if str(model_dir) == "rules":
        answer = _rules_answerer(params)
    elif str(model_dir) == "judge":
        answer = _judge_answerer()
    else:
        answer = _model_answerer(model_dir)
    model_id = served_model_name or Path(model_dir).name
    plan = faults or FaultPlan()
    capacity = asyncio.Semaphore(max_concurrent) if max_concurrent else contextlib.nullcontext()
    app = FastAPI(title="genz-speak serve")

    # As vLLM lists a model: its id, the folder it serves (root) and when the server started (created).
    entry = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "genz-speak"}
    entry["root"] = str(model_dir)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [entry]}

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
        return completion(model_id, out.text, out.tokens_in, out.tokens_out, out.finish_reason)

    return FaultInjector(app, plan, model_id, api_key, record)


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
    p.add_argument(
        "--served-model-name", help="the model id to list and answer as (default: the folder's name)"
    )
    p.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="rules: its generate.prompt_template"
    )
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
        create_app(
            args.model_dir,
            plan,
            args.latency,
            args.max_concurrent,
            api_key,
            args.record,
            args.params,
            args.served_model_name,
        ),
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
    cmd = [sys.executable, "-m", "genz_speak.testing.serve", str(model_dir), "--port", str(port), *options]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/stats", timeout=1).status_code == 200:  # needs no key
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
