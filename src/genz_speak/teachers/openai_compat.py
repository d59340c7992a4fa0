"""Any OpenAI-compatible chat server as the teacher: OpenAI, `vllm serve`, llama.cpp's server, Ollama; or
several of them serving one model (`generate.base_urls`), requests spread across them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from genz_speak.config import GenerateConfig
from genz_speak.endpoints import EndpointPool
from genz_speak.llm_client import call_with_retries, chat_text, complete, finish_reason, map_concurrent
from genz_speak.teachers.base import Journal, TeacherRequest, TeacherResult, teacher_request


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
            role="generate.base_urls" if cfg.base_urls else "generate.base_url",
        )
        # Before any row: a dead endpoint or a refused key is one line now, not every row's retries later.
        self.pool.preflight(cfg.model)

    def endpoints(self) -> frozenset[str]:
        return self.pool.identities()

    def _request(self, req: TeacherRequest, journal: Journal) -> TeacherResult:
        request = teacher_request(self.cfg, req.messages)
        tried = [self.pool.endpoints[0].identity]  # who the last try went to: a failure is theirs

        def once() -> tuple[str, Any, str | None, str]:
            with self.pool.client() as endpoint:  # each try, retries included, takes an endpoint in rotation
                tried.append(endpoint.identity)
                journal.sent(req.id, endpoint.identity)  # recorded before it is paid for
                resp = complete(endpoint.client, **request)
                return chat_text(resp), resp.usage, finish_reason(resp), endpoint.identity

        res = call_with_retries(once, self.cfg.max_retries, stop=self.pool.stopping)
        if res.error is not None:
            return TeacherResult(
                req.id, None, res.error, retries=res.retries, faults=res.faults, endpoint=tried[-1]
            )
        text, usage, finish, identity = res.value
        return TeacherResult(
            id=req.id,
            text=text,
            tokens_in=getattr(usage, "prompt_tokens", 0) or 0,
            tokens_out=getattr(usage, "completion_tokens", 0) or 0,
            retries=res.retries,
            faults=res.faults,
            endpoint=identity,
            finish_reason=finish,
        )

    def rewrite(self, requests: Iterable[TeacherRequest], journal: Journal) -> None:
        def work(req: TeacherRequest) -> None:
            # The worker records its own result: after a SIGTERM, requests in flight still land in the
            # cache as they finish, rather than being waited for and thrown away.
            journal.done(self._request(req, journal))

        for _ in map_concurrent(work, requests, self.pool.total_concurrency, stop=self.pool.stopping):
            pass

    def stats(self) -> dict[str, Any]:
        return {"endpoints": self.pool.stats()}

    def close(self) -> None:
        self.pool.close()
