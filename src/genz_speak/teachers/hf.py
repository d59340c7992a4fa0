"""A local transformers chat model as the teacher: batched, left-padded generation with its chat template."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from genz_speak.config import GenerateConfig
from genz_speak.generation import ChatGenerator
from genz_speak.models import inference_dtype
from genz_speak.teachers.base import Journal, TeacherRequest, TeacherResult, local_model_identity


class TransformersTeacher:
    def __init__(self, cfg: GenerateConfig):
        self.name = f"transformers:{cfg.model}"
        self.cfg = cfg
        self.identity = local_model_identity("transformers", cfg.model)
        self.generator = ChatGenerator(cfg.model, dtype=inference_dtype(cfg.model))

    def endpoints(self) -> frozenset[str]:
        return frozenset({self.identity})

    def rewrite(self, requests: Iterable[TeacherRequest], journal: Journal) -> None:
        reqs = list(requests)
        s = self.cfg.sampling
        outs = self.generator.generate(
            [r.messages for r in reqs],
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
            batch_size=self.cfg.batch_size,
        )
        for req, out in zip(reqs, outs, strict=True):
            result = TeacherResult(
                id=req.id,
                text=out.text,
                tokens_in=out.tokens_in,
                tokens_out=out.tokens_out,
                endpoint=self.identity,
                finish_reason=out.finish_reason,
            )
            journal.done(result)

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
