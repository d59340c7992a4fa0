"""Any OpenAI-compatible chat server as the teacher: OpenAI, `vllm serve`, llama.cpp's server, Ollama; or
several of them serving one model (`generate.base_urls`), requests spread across them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from genz_speak.config import GenerateConfig
from genz_speak.llm_client import (
    EndpointPool,
    call_with_retries,
    chat_request,
    chat_text,
    complete,
    map_concurrent,
)
from genz_speak.teachers.base import TeacherRequest, TeacherResult


class OpenAITeacher:
    def __init__(self, cfg: GenerateConfig):
        self.name = f"openai:{cfg.model}"
        self.cfg = cfg
        urls: list[str | None] = list(cfg.base_urls) or [cfg.base_url]
        self.pool = EndpointPool(
            urls,
            cfg.api_key_env,
            cfg.request_timeout,
            cfg.concurrency,
            max_failures=cfg.endpoint_max_failures,
            cooldown=cfg.endpoint_cooldown,
        )

    def _request(self, req: TeacherRequest) -> TeacherResult:
        s = self.cfg.sampling
        request = chat_request(
            self.cfg.model,
            req.messages,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_new_tokens,
            seed=s.seed,
        )

        def once() -> tuple[str, Any]:
            with self.pool.client() as client:  # each try, retries included, takes an endpoint in rotation
                resp = complete(client, **request)
                return chat_text(resp), resp.usage

        res = call_with_retries(once, self.cfg.max_retries)
        if res.error is not None:
            return TeacherResult(req.id, None, res.error, retries=res.retries, faults=res.faults)
        text, usage = res.value
        return TeacherResult(
            id=req.id,
            text=text,
            tokens_in=getattr(usage, "prompt_tokens", 0) or 0,
            tokens_out=getattr(usage, "completion_tokens", 0) or 0,
            retries=res.retries,
            faults=res.faults,
        )

    def rewrite(self, requests: Iterable[TeacherRequest]) -> Iterator[TeacherResult]:
        for _, result in map_concurrent(self._request, requests, self.pool.total_concurrency):
            yield result

    def stats(self) -> dict[str, Any]:
        return {"endpoints": self.pool.stats()}

    def close(self) -> None:
        self.pool.close()
