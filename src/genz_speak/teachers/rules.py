"""The offline teacher: a deterministic rules stylizer, so the embedded demo runs with no model and no key.

It only adds Gen Z framing (openers, asides, closers, emoji) and swaps a fixed list of non-factual words
(intensifiers, evaluatives, connectives), so every fact, number and name of the source survives by
construction. It is a stand-in for a real teacher: varied enough to learn a style from, far from what an
LLM teacher writes (see README, "Switching to a real teacher").
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from typing import Any

from genz_speak.teachers.base import RULES_VERSION, Journal, TeacherRequest, TeacherResult

OPENERS = (
    "ngl,",
    "okay so",
    "bestie,",
    "lowkey,",
    "fr,",
    "not gonna lie,",
    "real talk:",
    "ok bestie,",
    "say less:",
    "no bc",
    "hear me out:",
    "okay okay,",
)
CLOSERS = (
    "no cap.",
    "fr fr.",
    "it's giving main character energy ✨",
    "periodt.",
    "that's the tea ☕",
    "iykyk.",
    "slay 💅",
    "and that's on period.",
    "rent free in my head 🧠",
    "we love to see it 🙌",
    "W knowledge 🔥",
    "you're welcome bestie 💅",
)
ASIDES = ("(no cap)", "(fr)", "(deadass)", "(real)", "(iykyk)", "(it's true bestie)")
EMOJI = ("🔥", "✨", "💀", "😭", "🙌", "💯", "👀")

# Non-factual words only: swapping them never changes what the answer claims. Only lowercase occurrences
# are swapped: a capitalised one may be a name or part of one ("the Great Barrier Reef", "Good Friday").
SWAPS = {
    "very": "hella",
    "really": "lowkey",
    "extremely": "mad",
    "good": "solid",
    "great": "elite",
    "amazing": "bussin",
    "excellent": "top tier",
    "delicious": "bussin",
    "interesting": "kinda wild",
    "important": "a big deal",
    "however": "but ngl",
    "also": "plus",
    "usually": "lowkey usually",
    "friends": "besties",
    "friend": "bestie",
    "excited": "hyped",
    "funny": "hilarious 💀",
    "beautiful": "gorgeous fr",
    "popular": "iconic",
    "famous": "iconic",
    "helps": "lowkey helps",
}
_SWAP_RE = re.compile(r"\b(" + "|".join(sorted(SWAPS, key=len, reverse=True)) + r")\b")


_COMMON_WORDS = (
    "a an the it its this that these those there they we you your yes no in on at for from to by with "
    "each every some many most one two three four five six seven eight nine ten be give keep use set "
    "water sunlight light bake go pick try start add wake carry drink listen exercise plan"
)
_COMMON_STARTS = frozenset(_COMMON_WORDS.split())


def stylize(text: str, key: str) -> str:
    """Rewrite `text` in Gen Z voice; `key` seeds the choices so the output is reproducible."""
    rng = random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))
    body = _SWAP_RE.sub(lambda m: SWAPS[m.group(0)], text.strip())
    if "\n" not in body:
        # One aside after the first sentence of a prose answer (poems and dialogues keep their lines).
        parts = re.split(r"(?<=[.!?])\s+", body, maxsplit=1)
        if len(parts) == 2 and rng.random() < 0.6:
            body = f"{parts[0]} {rng.choice(ASIDES)} {parts[1]}"
    opener = rng.choice(OPENERS)
    # Lower-case the first word after the opener only when it is an ordinary word, so names keep capitals.
    if body.split(" ", 1)[0].lower().strip(",.:;!?") in _COMMON_STARTS:
        body = body[:1].lower() + body[1:]
    closer = rng.choice(CLOSERS)
    emoji = rng.choice(EMOJI) if rng.random() < 0.5 else ""
    sep = "\n" if "\n" in body else " "
    return f"{opener} {body}{sep}{closer} {emoji}".rstrip()


class RulesTeacher:
    name = "rules"

    def endpoints(self) -> frozenset[str]:
        return frozenset({f"rules:{RULES_VERSION}"})

    def rewrite(self, requests: Iterable[TeacherRequest], journal: Journal) -> None:
        for req in requests:
            text = stylize(req.row["response"], req.id)
            journal.done(TeacherResult(id=req.id, text=text, endpoint=f"rules:{RULES_VERSION}"))

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
