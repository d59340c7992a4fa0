"""Facts an answer states, compared with the reference: numbers and names, however they are written.

Numbers are read as values, whatever their form ("1,000", "1 000", "1k", "one thousand", "16th",
"95%"), so a rewrite that writes a number differently keeps it, and a changed value is a changed value.
Names are the reference's runs of capitalised words (people, places, works), matched in any case, since
Gen Z writing often lowercases them, by any of their words or their initials ("Armstrong", "US").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from genz_speak.text import FUNCTION_WORDS, words

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "dozen": 12, "hundred": 100,
}  # fmt: skip
_SCALES = {"thousand": 1e3, "k": 1e3, "million": 1e6, "mil": 1e6, "billion": 1e9, "bn": 1e9}
# "300m" is 300 million or 300 metres, "2b" 2 billion or a grade: both readings are kept.
_AMBIGUOUS = {"m": 1e6, "b": 1e9}
# A numeral: digit groups joined by thousands separators (comma, space, no-break spaces) or a decimal
# point, an optional ordinal suffix or percent sign, an optional scale ("2 million", "300k", "1.5m").
_NUMERAL = re.compile(
    r"(?<![\w.])(\d{1,3}(?:[,\u00a0\u202f ]\d{3})+(?!\d)|\d+)(\.\d+)?(?:st|nd|rd|th)?"
    r"(?:\s*(thousand|million|billion|mil|bn|k)\b|(m|b)\b)?",
    re.IGNORECASE,
)
_WORD_NUMBER = re.compile(
    r"\b("
    + "|".join(sorted(_UNITS, key=len, reverse=True))
    + r")(?:[- ]("
    + "|".join(k for k, v in _UNITS.items() if 0 < v < 10)
    + r"))?(?:\s+(hundred|thousand|million|billion))?\b",
    re.IGNORECASE,
)
# Number words that rarely state a fact on their own ("one of the", "zero chance").
_WEAK_WORDS = frozenset({"one", "zero"})


def number_readings(text: str, words: bool = True) -> list[frozenset[float]]:
    """Each number a text states, as the set of values it can mean (one, unless its scale is ambiguous);
    `words=False` reads numerals only."""
    found: list[frozenset[float]] = []
    for m in _NUMERAL.finditer(text):
        whole, frac, scale, ambiguous = m.group(1), m.group(2) or "", m.group(3), m.group(4)
        value = float(re.sub(r"[,\u00a0\u202f ]", "", whole) + frac)
        if scale:
            found.append(frozenset({value * _SCALES[scale.lower()]}))
        elif ambiguous:
            found.append(frozenset({value, value * _AMBIGUOUS[ambiguous.lower()]}))
        else:
            found.append(frozenset({value}))
    for m in _WORD_NUMBER.finditer(text) if words else ():
        head, tail, scale = m.group(1).lower(), m.group(2), m.group(3)
        if head in _WEAK_WORDS and not scale:
            continue
        value = float(_UNITS[head] + (_UNITS[tail.lower()] if tail else 0))
        if scale:
            value *= 100 if scale.lower() == "hundred" else _SCALES[scale.lower()]
        found.append(frozenset({value}))
    return found


def numbers(text: str) -> set[float]:
    """Every value the numbers of a text can mean."""
    return set().union(*number_readings(text)) if text else set()


def _stem(word: str) -> str:
    """A word without its possessive ending: "Sun's" names the Sun, "Jones'" names Jones."""
    return re.sub(r"'s?$", "", word)


def name_units(text: str, openers: bool = False) -> list[tuple[str, ...]]:
    """The names a text mentions (people, places, works, brands), each as its lowercased words ("Jane
    Austen" -> ("jane", "austen")): runs of capitalised words of two letters or more ("°C" is no name) that
    are not ordinary sentence openers; with `openers`, a capital that starts a sentence counts too."""
    found: list[tuple[str, ...]] = []
    for sentence in re.split(r"(?<=[.!?:])\s+|\n+", text):
        toks = words(sentence)
        run: list[str] = []
        for i, w in enumerate(toks):
            opener = (
                not openers and i == 0 and w[1:].islower() and len(toks) > 1 and not toks[1][:1].isupper()
            )
            if w[:1].isupper() and len(w) > 1 and w.lower() not in FUNCTION_WORDS and w != "I" and not opener:
                run.append(_stem(w).lower())
                continue
            if run:
                found.append(tuple(run))
            run = []
        if run:
            found.append(tuple(run))
    return list(dict.fromkeys(found))


def _mentioned(name: tuple[str, ...], answer_words: set[str]) -> bool:
    """Whether the answer names `name`: any of its words (a surname, a town's short name, any case) or,
    for a name of several words, its initials ("United States" -> "us" or "usa")."""
    initials = "".join(w[0] for w in name)
    return any(w in answer_words for w in name if len(w) >= 3) or (
        len(name) > 1 and (initials in answer_words or f"{initials}a" in answer_words)
    )


@dataclass(frozen=True)
class FactCheck:
    """How an answer's numbers and names compare with what the question and reference state.

    What the reference states and the answer leaves out makes it less complete; what the answer states in
    its place (a number or a name that neither the reference nor the question supports, where one of the
    reference's is missing) contradicts it. Correct extra detail costs nothing: a number or name the
    reference does not have counts against the answer only as the stand-in for one it dropped."""

    numbers_kept: float | None  # share of the reference's numbers the answer states; None: it has none
    numbers_contradicted: int  # reference numbers replaced by numbers nothing supports
    names_kept: float | None  # share of the reference's names the answer mentions; None: it has none
    names_contradicted: int  # reference names replaced by names nothing supports

    @property
    def score(self) -> float:
        """1 for an answer that keeps every number and name of the reference (or where it has none); what
        it leaves out lowers that to a quarter at most (incomplete, not wrong); each one it replaces cuts
        the result to 30%."""
        kept = [v for v in (self.numbers_kept, self.names_kept) if v is not None]
        complete = 0.25 + 0.75 * (sum(kept) / len(kept)) if kept else 1.0
        return complete * 0.3 ** (self.numbers_contradicted + self.names_contradicted)


def check_facts(answer: str, reference: str, instruction: str, context: str = "") -> FactCheck:
    """Compare the answer's numbers and names with the reference's. The instruction and its context
    support whatever they state; names the instruction already gives are not asked of the answer ("DNA"
    in "What does DNA stand for?"), those only in the context are (a context offers wrong candidates too)."""
    ref_numbers, ans_numbers = numbers(reference), numbers(answer)
    support = ref_numbers | numbers(instruction) | numbers(context)
    # Only numerals count against an answer: number words are as often counts of what it lists ("four
    # languages") as claims.
    unsupported_numbers = [r for r in number_readings(answer, words=False) if not r & support]
    missing_numbers = ref_numbers - ans_numbers
    answer_words = {_stem(w).lower() for w in words(answer)}
    asked = {w for name in name_units(instruction) for w in name}
    key_names = [n for n in name_units(reference) if not set(n) <= asked]
    known = {_stem(w).lower() for w in words(" ".join((reference, instruction, context)))}
    # A capital that starts a sentence may be a name too ("Canada bought it"): it counts as a stand-in only
    # for a name the reference has and the answer dropped.
    unsupported_names = [n for n in name_units(answer, openers=True) if not any(w in known for w in n)]
    missing_names = [n for n in key_names if not _mentioned(n, answer_words)]
    return FactCheck(
        numbers_kept=(len(ref_numbers & ans_numbers) / len(ref_numbers)) if ref_numbers else None,
        numbers_contradicted=min(len(missing_numbers), len(unsupported_numbers)),
        names_kept=(1 - len(missing_names) / len(key_names)) if key_names else None,
        names_contradicted=min(len(missing_names), len(unsupported_names)),
    )
