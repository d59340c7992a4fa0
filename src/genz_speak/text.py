"""Language-level text measures shared by the offline judge and the evaluation's surface statistics.

Nothing here is fitted or drawn from the project's own texts: English function words are a closed class
of the language, and emoji are a range of Unicode, so the measures mean the same on any data set.
"""

from __future__ import annotations

import re

# English closed-class words (articles, pronouns, prepositions, conjunctions, auxiliaries, determiners,
# a few discourse adverbs). Real sentences are built on them (about 40-55% of running English text);
# a pile of slang and emoji has almost none.
_FUNCTION_WORDS = """
    a an the this that these those some any each every either neither no all both few many much more
    most other another such what which who whom whose where when why how whether if then than so as
    because since while though although unless until till before after once i me my mine myself you your
    yours yourself yourselves he him his himself she her hers herself it its itself we us our ours
    ourselves they them their theirs themselves one ones be am is are was were been being have has had
    having do does did doing done will would shall should can could may might must ought need dare get
    gets got getting go goes going gonna wanna gotta and or but nor yet for of to in on at by with from
    into onto upon about above below under over between among through during against without within
    along across around behind beyond near off out up down away back toward towards per via like just
    also too very really quite only even still not never always often there here now again ever else i'm
    you're he's she's it's we're they're i've you've we've they've i'd you'd he'd she'd we'd they'd i'll
    you'll he'll she'll we'll they'll isn't aren't wasn't weren't don't doesn't didn't won't wouldn't
    can't couldn't shouldn't haven't hasn't hadn't that's there's what's who's let's
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())

_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\u3030\u303d\u3297\u3299\ufe0f\u200d]"
)
_WORD = re.compile(r"[^\W_](?:[\w'’-]*[^\W_])?")


def words(text: str) -> list[str]:
    """Word tokens (letters, digits, inner apostrophes and hyphens), as written."""
    return _WORD.findall(text.replace("’", "'"))


def emoji_count(text: str) -> int:
    return sum(1 for ch in _EMOJI.findall(text) if ch not in "\ufe0f\u200d")


def has_emoji(text: str) -> bool:
    return emoji_count(text) > 0


def function_word_ratio(text: str) -> float:
    """Share of word tokens that are English function words (0 for a text without words)."""
    toks = [w.lower() for w in words(text)]
    return sum(t in FUNCTION_WORDS for t in toks) / len(toks) if toks else 0.0


def opening(text: str, n: int = 3) -> str:
    """The first `n` words, lowercased: what a template-learning model repeats."""
    return " ".join(w.lower() for w in words(text)[:n])


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of word n-grams that already occurred earlier in the text (0 = none repeats)."""
    toks = [w.lower() for w in words(text)]
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
