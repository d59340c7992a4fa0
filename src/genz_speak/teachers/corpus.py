"""The offline default teacher: the hand-written Gen Z corpus (data/genz_corpus.jsonl).

It stands in for an LLM teacher so the embedded demo runs with no model and no key, and what the student
learns from is natural Gen Z written by people, not a template. A source row the corpus has no rewrite
for is an error, or (generate.corpus_missing: rules) gets the rules stylizer's caricature, marked as such
in the dataset's `teacher` field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from genz_speak.config import GenerateConfig
from genz_speak.errors import ParamError
from genz_speak.teachers.base import Journal, TeacherRequest, TeacherResult
from genz_speak.teachers.rules import stylize

CARICATURE = "rules (caricature)"


class CorpusTeacher:
    name = "corpus"

    def __init__(self, corpus: Sequence[dict[str, Any]]):
        self.rewrites = {r["id"]: r["genz"] for r in corpus}

    def endpoints(self) -> frozenset[str]:
        # The cache key holds the rewrite itself (and the rules version for rows without one).
        return frozenset({self.name})

    def rewrite(self, requests: Iterable[TeacherRequest], journal: Journal) -> None:
        # Rows without a rewrite reach here only with generate.corpus_missing: rules (generate checks).
        for req in requests:
            text = self.rewrites.get(req.id)
            if text is not None:
                journal.done(TeacherResult(id=req.id, text=text, teacher=self.name, endpoint=self.name))
            else:
                text = stylize(req.row["response"], req.id)
                journal.done(TeacherResult(id=req.id, text=text, teacher=CARICATURE, endpoint=self.name))

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def check_coverage(cfg: GenerateConfig, rows: list[dict[str, Any]], corpus: Sequence[dict[str, Any]]) -> None:
    """With the corpus teacher and generate.corpus_missing: error, every source row needs a rewrite."""
    if cfg.teacher != "corpus" or cfg.corpus_missing != "error":
        return
    have = {r["id"] for r in corpus}
    missing = [r for r in rows if r["id"] not in have]
    if missing:
        first = missing[0]
        raise ParamError(
            "generate.teacher",
            f"corpus has no rewrite for {len(missing)} of {len(rows)} "
            f"source rows (first: {first['id']}, {first['instruction'][:60]!r}); add them to the corpus, "
            "pick an LLM teacher, or set generate.corpus_missing: rules (the rules stylizer's caricature "
            "for those rows)",
        )
