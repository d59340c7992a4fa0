"""vLLM in-process as the teacher: `LLM.chat` over whole batches with the model's chat template."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from genz_speak.config import GenerateConfig
from genz_speak.io import clean_text
from genz_speak.teachers.base import Journal, TeacherRequest, TeacherResult, local_model_identity


class VLLMTeacher:
    def __init__(self, cfg: GenerateConfig):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise ImportError(
                "generate.teacher: vllm needs the vllm extra (pip install 'genz-speak[vllm]')"
            ) from err
        self.name = f"vllm:{cfg.model}"
        self.identity = local_model_identity("vllm", cfg.model)
        v = cfg.vllm
        engine: dict[str, Any] = {"attention_backend": v.attention_backend} if v.attention_backend else {}
        self.llm = LLM(
            model=cfg.model,
            dtype=v.dtype,
            seed=cfg.sampling.seed,
            gpu_memory_utilization=v.gpu_memory_utilization,
            max_model_len=v.max_model_len,
            enforce_eager=v.enforce_eager,
            **engine,
        )
        s = cfg.sampling
        self.params = SamplingParams(
            temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens, seed=s.seed
        )

    def endpoints(self) -> frozenset[str]:
        return frozenset({self.identity})

    def rewrite(self, requests: Iterable[TeacherRequest], journal: Journal) -> None:
        reqs = list(requests)
        outputs = self.llm.chat([r.messages for r in reqs], self.params, use_tqdm=False)
        for req, out in zip(reqs, outputs, strict=True):
            completion = out.outputs[0]
            result = TeacherResult(
                id=req.id,
                text=clean_text(completion.text),
                tokens_in=len(out.prompt_token_ids or []),
                tokens_out=len(completion.token_ids),
                endpoint=self.identity,
                finish_reason=completion.finish_reason,
            )
            journal.done(result)

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
