"""Teachers rewrite source answers in Gen Z voice; `build_teacher` picks one by `generate.teacher`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genz_speak.config import GenerateConfig
from genz_speak.teachers.base import Teacher, TeacherRequest, TeacherResult


def build_teacher(cfg: GenerateConfig, corpus: Sequence[dict[str, Any]] = ()) -> Teacher:
    """The registry: heavy backends are imported only when chosen."""
    if cfg.teacher == "corpus":
        from genz_speak.teachers.corpus import CorpusTeacher

        return CorpusTeacher(corpus)
    if cfg.teacher == "rules":
        from genz_speak.teachers.rules import RulesTeacher

        return RulesTeacher()
    if cfg.teacher == "transformers":
        from genz_speak.teachers.hf import TransformersTeacher

        return TransformersTeacher(cfg)
    if cfg.teacher == "openai":
        from genz_speak.teachers.openai_compat import OpenAITeacher

        return OpenAITeacher(cfg)
    from genz_speak.teachers.vllm_engine import VLLMTeacher

    return VLLMTeacher(cfg)


__all__ = ["Teacher", "TeacherRequest", "TeacherResult", "build_teacher"]
