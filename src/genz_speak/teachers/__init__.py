"""Teachers rewrite source answers in Gen Z voice; `build_teacher` picks one by `generate.teacher`."""

from __future__ import annotations

from genz_speak.config import GenerateConfig
from genz_speak.teachers.base import Teacher, TeacherRequest, TeacherResult


def build_teacher(cfg: GenerateConfig) -> Teacher:
    """The registry: heavy backends are imported only when chosen."""
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
