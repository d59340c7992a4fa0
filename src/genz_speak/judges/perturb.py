"""Rule-made training pairs for the fact-consistency model: an answer that keeps every claim of its
reference, or the same answer with exactly one claim flipped.

Each flip is a kind of its own (`FLIPS`), so the model can be measured on kinds it never saw in training
(`judges/consistency.py` holds whole kinds out). The flips are made in the answer's own words and leave
the rest of it as it was, because that is what a wrong answer in the calibration set and in real outputs
looks like: one claim changed, the voice and most words kept.

The word lists below are closed classes of English (antonyms, negations, months, weekdays), written here,
not drawn from the project's texts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from genz_speak.text import FUNCTION_WORDS

# Pairs of words whose swap reverses a claim; each pair is used in both directions.
_ANTONYMS = """
east west, north south, left right, up down, above below, over under, inside outside, in out,
upper lower, top bottom, front back, before after, earlier later, first last, early late, past future,
start end, begin finish, open close, opened closed, hot cold, warm cool, heat cool, hotter colder,
warmer cooler, high low, higher lower, highest lowest, large small, larger smaller, largest smallest,
big small, bigger smaller, biggest smallest, long short, longer shorter, longest shortest, tall short,
wide narrow, heavy light, heavier lighter, thick thin, deep shallow, fast slow, faster slower,
fastest slowest, quick slow, strong weak, stronger weaker, hard soft, harder softer, dense sparse,
more less, most least, many few, increase decrease, increases decreases, increased decreased,
rise fall, rises falls, rose fell, raise lower, raises lowers, gain lose, gains loses, grow shrink,
grows shrinks, expand contract, expands contracts, add remove, adds removes, absorb release,
absorbs releases, absorbed released, attract repel, attracts repels, accept reject, accepted rejected,
allow forbid, allowed forbidden, win lose, won lost, winner loser, always never, all none, same different,
true false, correct incorrect, right wrong, positive negative, safe dangerous, healthy unhealthy,
good bad, better worse, best worst, cheap expensive, cheaper pricier, rich poor, old young, older younger,
oldest youngest, new old, newer older, ancient modern, dry wet, wetter drier, light dark, lighter darker,
bright dim, loud quiet, louder quieter, full empty, alive dead, male female, buy sell, bought sold,
import export, imports exports, enter exit, arrive leave, push pull, pushes pulls, freeze melt,
freezes melts, solid liquid, acidic alkaline, acid base, odd even, plus minus, maximum minimum,
major minor, internal external, private public, legal illegal, possible impossible, common rare,
include exclude, includes excludes, visible invisible, natural artificial, inner outer, rural urban,
summer winter, spring autumn, day night, morning evening, sunrise sunset, land sea, plants animals,
herbivore carnivore, herbivores carnivores, predator prey, oxygen carbon, vowel consonant,
fruit vegetable, fruits vegetables, mammal reptile, mammals reptiles, input output, sender receiver,
lend borrow, teacher student, parent child, mother father, king queen, husband wife, son daughter
"""
ANTONYMS: dict[str, str] = {}
for _pair in _ANTONYMS.replace("\n", " ").split(","):
    _a, _b = _pair.split()
    ANTONYMS.setdefault(_a, _b)
    ANTONYMS.setdefault(_b, _a)

_NEGATABLE = frozenset(
    "is are was were can could will would should does do did has have had must may might".split()  # noqa: SIM905
)
_NEGATIONS = {"not", "never", "no", "n't"}
MONTHS = "january february march april may june july august september october november december".split()  # noqa: SIM905
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()  # noqa: SIM905
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?(?![\w])")
_NAME = re.compile(r"\b[A-Z][a-z]{2,}(?:\s+[A-Z][a-z]+)*\b")

Flip = Callable[[str, str, random.Random, Sequence[str]], str | None]


def _replace_at(text: str, start: int, end: int, new: str) -> str:
    old = text[start:end]
    if old[:1].isupper():
        new = new[:1].upper() + new[1:]
    if old.isupper() and len(old) > 1:
        new = new.upper()
    return text[:start] + new + text[end:]


def _pick(rng: random.Random, matches: list[re.Match[str]]) -> re.Match[str] | None:
    return rng.choice(matches) if matches else None


def flip_antonym(answer: str, reference: str, rng: random.Random, others: Sequence[str]) -> str | None:
    """One word replaced by its opposite (east -> west, larger -> smaller, absorbs -> releases)."""
    m = _pick(rng, [m for m in _WORD.finditer(answer) if m.group(0).lower() in ANTONYMS])
    return None if m is None else _replace_at(answer, m.start(), m.end(), ANTONYMS[m.group(0).lower()])


def flip_negation(answer: str, reference: str, rng: random.Random, others: Sequence[str]) -> str | None:
    """A negation added after an auxiliary ("is" -> "is not"), or an existing one removed."""
    negated = [
        m
        for m in re.finditer(r"\b(\w+)(n't| not| never)\b", answer, re.I)
        if m.group(1).lower() in _NEGATABLE or m.group(2) == "n't"
    ]
    if negated and rng.random() < 0.5:
        m = rng.choice(negated)
        base = m.group(1)
        base = {"ca": "can", "wo": "will", "sha": "shall"}.get(base.lower(), base)
        return answer[: m.start()] + base + answer[m.end() :]
    aux = [m for m in _WORD.finditer(answer) if m.group(0).lower() in _NEGATABLE]
    m = _pick(rng, aux)
    if m is None:
        return None
    return answer[: m.end()] + " not" + answer[m.end() :]


def flip_number(answer: str, reference: str, rng: random.Random, others: Sequence[str]) -> str | None:
    """One number changed to another plausible value (a year by a few years, a count by a factor)."""
    m = _pick(rng, list(_NUMBER.finditer(answer)))
    if m is None:
        return None
    text = m.group(0).replace(",", "")
    value = float(text)
    if 1000 <= value <= 2100 and value.is_integer():
        new = str(int(value) + rng.choice([-30, -11, -5, 5, 11, 30]))
    elif value.is_integer():
        new = str(int(value) * rng.choice([2, 3, 10]) if value else 3)
        if new == text:
            new = str(int(value) + 1)
    else:
        new = f"{value * rng.choice([0.5, 2, 3]):g}"
    return _replace_at(answer, m.start(), m.end(), new)


def flip_name(answer: str, reference: str, rng: random.Random, others: Sequence[str]) -> str | None:
    """A name of the reference (however the answer writes it) replaced by a name from another text."""
    names = {n for n in _NAME.findall(reference) if n.lower() not in ANTONYMS and len(n) > 3}
    spans = [m for n in names for m in re.finditer(re.escape(n), answer, re.I)]
    foreign = [
        n for o in others for n in _NAME.findall(o) if n not in names and n.lower() not in answer.lower()
    ]
    m = _pick(rng, spans)
    if m is None or not foreign:
        return None
    new = rng.choice(foreign)
    return _replace_at(answer, m.start(), m.end(), new if m.group(0)[:1].isupper() else new.lower())


def flip_date(answer: str, reference: str, rng: random.Random, others: Sequence[str]) -> str | None:
    """A month or weekday replaced by another."""
    for words in (MONTHS, WEEKDAYS):
        m = _pick(rng, [m for m in _WORD.finditer(answer) if m.group(0).lower() in words])
        if m is not None:
            new = rng.choice([w for w in words if w != m.group(0).lower()])
            return _replace_at(answer, m.start(), m.end(), new)
    return None


def _split_items(text: str) -> list[str]:
    """The items of "a, b and c" (or "a, b or c"), stripped."""
    return [
        p.strip(" .!?") for p in re.split(r",\s*(?:and\s+|or\s+)?|\s+(?:and|or)\s+", text) if p.strip(" .!?")
    ]


def _groups(text: str) -> list[list[str]]:
    """The reference's lists ("red, green and blue"), each as its short items: an item belongs with its
    own list, so trading two items of different lists misfiles both."""
    out = []
    for part in re.split(r"[\n;]|(?<=[.!?])\s|:\s", text):
        pieces = _split_items(part)
        if len(pieces) >= 3 or (len(pieces) == 2 and ("," in part or " or " in part)):
            short = [p for p in pieces if 1 <= len(p.split()) <= 3 and re.search(r"[A-Za-z]{3}", p)]
            items = [p for p in short if p.lower() not in FUNCTION_WORDS]
            if items:
                out.append(items)
    return out


def _find(item: str, text: str) -> re.Match[str] | None:
    return re.search(r"(?<![\w'])" + re.escape(item) + r"(?![\w'])", text, re.I)


def flip_swap(answer: str, reference: str, rng: random.Random, others: Sequence[str]) -> str | None:
    """Two things trade places in the answer: two names of the reference (who did what to whom, the other
    option) or items of two of its lists (each filed under the other's class): every word stays, the claim
    changes."""
    lists = _groups(reference)
    # Names listed together ("Armstrong and Aldrin") play one role: trading them changes nothing.
    together = {frozenset(i.lower() for i in g) for g in lists}
    named = sorted({n for n in _NAME.findall(reference) if n.split()[0].lower() not in FUNCTION_WORDS})
    names = [m for n in named if (m := _find(n, answer)) is not None]
    pairs = [
        (a, b)
        for a in names
        for b in names
        if a.end() <= b.start() and not any({a.group(0).lower(), b.group(0).lower()} <= g for g in together)
    ]
    groups = [[m for item in g if (m := _find(item, answer)) is not None] for g in lists]
    for x, gx in enumerate(groups):
        for gy in groups[x + 1 :]:
            pairs += [
                (a, b) if a.start() < b.start() else (b, a)
                for a in gx
                for b in gy
                if a.end() <= b.start() or b.end() <= a.start()
            ]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    if a.group(0).lower() == b.group(0).lower():
        return None
    return answer[: a.start()] + b.group(0) + answer[a.end() : b.start()] + a.group(0) + answer[b.end() :]


_GROUP = re.compile(r"(?P<label>\b[\w' -]{2,30}):[ \t]*(?P<items>[^\n.;:]+)")


def flip_class(answer: str, reference: str, rng: random.Random, others: Sequence[str]) -> str | None:
    """One item of a labelled group moved to another group ("fruits: apple, tomato. vegetables: carrot"
    -> tomato under vegetables): a classification with one item misfiled."""
    groups = list(_GROUP.finditer(answer))
    sources = [g for g in groups if len(_split_items(g.group("items"))) >= 2]
    if len(groups) < 2 or not sources:
        return None
    src = rng.choice(sources)
    dst = rng.choice([g for g in groups if g is not src])
    items = _split_items(src.group("items"))
    item = rng.choice(items)
    edits = {
        src: ", ".join(i for i in items if i != item),
        dst: ", ".join([*_split_items(dst.group("items")), item]),
    }
    out = answer
    for g in sorted(edits, key=lambda g: g.start("items"), reverse=True):  # from the end: offsets hold
        out = out[: g.start("items")] + edits[g] + out[g.end("items") :]
    return out


FLIPS: dict[str, Flip] = {
    "antonym": flip_antonym,
    "negation": flip_negation,
    "number": flip_number,
    "name": flip_name,
    "date": flip_date,
    "swap": flip_swap,
    "class": flip_class,
}


def keep_reordered(answer: str, rng: random.Random) -> str | None:
    """The answer with its sentences or lines in another order: every claim kept."""
    parts = [p for p in re.split(r"(?<=[.!?])\s+|\n+", answer.strip()) if p]
    if len(parts) < 2:
        return None
    rng.shuffle(parts)
    return " ".join(parts)


def flip(kind: str, answer: str, reference: str, rng: random.Random, others: Sequence[str]) -> str | None:
    """`answer` with one claim flipped by `kind`, or None when that kind cannot flip anything in it."""
    out = FLIPS[kind](answer, reference, rng, others)
    return out if out is not None and out.strip() != answer.strip() else None
