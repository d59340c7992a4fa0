"""Checks every teacher rewrite must pass before it enters the dataset."""

from __future__ import annotations

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


def numbers(text: str) -> set[str]:
    """The numbers in `text`, thousands separators dropped: "1,000", "1 000" and "1000" are one number."""
    return {n.translate(_SEPARATORS) for n in _NUMBER.findall(text)}


def rejection_reason(source: str, prompt: str, output: str, cfg: ValidationConfig) -> str | None:
    """Return why `output` is rejected, or None when it passes."""
    out = output.strip()
    if len(out) < cfg.min_chars:
        return f"too short ({len(out)} < {cfg.min_chars} chars)"
    cap = max(cfg.max_length_ratio * len(source), cfg.max_length_floor)
    if len(out) > cap:
        return (
            f"too long ({len(out)} chars, over {cap:.0f}: {cfg.max_length_ratio}x the source's "
            f"{len(source)}, at least {cfg.max_length_floor})"
        )
    if _REFUSAL.search(out) and not _REFUSAL.search(source):
        return "refusal"
    if prompt.strip() and out in prompt and len(out) > len(source):
        return "echo of the prompt"
    if SequenceMatcher(None, source.strip(), out).ratio() > cfg.max_echo_similarity:
        return "echo of the source (not restyled)"
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
