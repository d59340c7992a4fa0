"""Checks every teacher rewrite must pass before it enters the dataset, and the clean-up before them
(reasoning blocks stripped)."""

from __future__ import annotations

import json
import re
from difflib import SequenceMatcher

from genz_speak.config import ValidationConfig

_GROUP_SPACES = " \u00a0\u202f\u2009"  # space, no-break, narrow no-break, thin: thousands separators
# "1 000" / "12 345 678" (groups of three after a space) is one number; otherwise digits with . or , inside.
_NUMBER = re.compile(rf"(?<!\d)\d{{1,3}}(?:[{_GROUP_SPACES}]\d{{3}})+(?:[.,]\d+)?(?!\d)|\d+(?:[.,]\d+)*")
_SEPARATORS = str.maketrans("", "", "," + _GROUP_SPACES)
# A capitalised word not at the start of a sentence: a cheap proxy for a named entity.
_ENTITY = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}\b")
_REFUSAL = re.compile(
    r"\b(I can(?:no|')t (?:help|assist|do that)|I'm sorry, but|as an AI( language model)?|I am unable to)\b",
    re.IGNORECASE,
)
# Words that carry no content of their own: a rewrite is not judged on keeping these.
_STOPWORD_TEXT = """
    a an the and or but nor so yet if then than as of at by for from in into on onto to with without about
    over under up down out off again further once here there when where why how all any both each few more
    most other some such no not only own same too very can will just should would could may might must shall
    i me my mine myself we us our ours you your yours he him his she her hers it its they them their theirs
    what which who whom whose this that these those am is are was were be been being have has had having do
    does did doing also because while until during before after above below between through against among
    s t d ll m re ve
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[^\W_]+")


def numbers(text: str) -> set[str]:
    """The numbers in `text`, thousands separators dropped: "1,000", "1 000" and "1000" are one number."""
    return {n.translate(_SEPARATORS) for n in _NUMBER.findall(text)}


def _stem(word: str) -> str:
    # Light stemming: enough that "planets"/"planet" and "boils"/"boiling" meet; nothing language-aware.
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", ""), ("ly", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)] + repl
    return word


def content_words(text: str) -> set[str]:
    """The content words of `text`, case-folded and lightly stemmed, stopwords out; numbers as numbers."""
    words = {_stem(w) for w in _WORD.findall(text.casefold()) if w not in _STOPWORDS and not w.isdigit()}
    return words | numbers(text)


def source_overlap(source: str, output: str) -> float:
    """The share of the source's content words the output keeps (1.0 for a source without any)."""
    wanted = content_words(source)
    return len(wanted & content_words(output)) / len(wanted) if wanted else 1.0


def _is_json_value(text: str) -> bool:
    if text[:1] not in ("{", "["):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def rejection_reason(
    source: str, prompt: str, output: str, cfg: ValidationConfig, finish_reason: str | None = None
) -> str | None:
    """Return why `output` (reasoning already stripped) is rejected, or None when it passes."""
    out = output.strip()
    if finish_reason == "length" and cfg.reject_truncated:
        return "truncated (finish_reason: length; raise generate.sampling.max_new_tokens)"
    if len(out) < cfg.min_chars:
        return f"too short ({len(out)} < {cfg.min_chars} chars)"
    cap = max(cfg.max_length_ratio * len(source), cfg.max_length_floor)
    if len(out) > cap:
        return (
            f"too long ({len(out)} chars, over {cap:.0f}: {cfg.max_length_ratio}x the source's "
            f"{len(source)}, at least {cfg.max_length_floor})"
        )
    if _is_json_value(out) and not _is_json_value(source.strip()):
        return "a JSON value, not a rewrite"
    if _REFUSAL.search(out) and not _REFUSAL.search(source):
        return "refusal"
    if prompt.strip() and out in prompt and len(out) > len(source):
        return "echo of the prompt"
    if SequenceMatcher(None, source.strip(), out).ratio() > cfg.max_echo_similarity:
        return "echo of the source (not restyled)"
    overlap = source_overlap(source, out)
    if overlap < cfg.min_source_overlap:
        return (
            f"not a rewrite of this answer (keeps {overlap:.2f} of its content words, under "
            f"generate.validation.min_source_overlap {cfg.min_source_overlap})"
        )
    if cfg.keep_numbers:
        missing = numbers(source) - numbers(out)
        if missing:
            return f"lost numbers: {sorted(missing)}"
    if cfg.keep_entities:
        # Case-insensitive: Gen Z rewrites often lowercase names ("jane austen"), which keeps the fact.
        lowered = out.lower()
        lost = {e for e in _ENTITY.findall(source) if e.lower() not in lowered}
        if lost:
            return f"lost names: {sorted(lost)}"
    return None
