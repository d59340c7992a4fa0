"""The offline judge orders answers the way the rubric does, on a few fixed rows written here.

The text measures and fact check are pure Python; the style model is fitted once for the module from the
shipped corpus with the embedded LM (nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from genz_speak.config import OfflineJudgeConfig
from genz_speak.data.corpus import read_corpus
from genz_speak.judges.facts import check_facts, numbers
from genz_speak.judges.offline import Item, OfflineJudge, coherence
from tests.conftest import ROOT

INSTRUCTION = "Who wrote the novel Pride and Prejudice?"
REFERENCE = "Pride and Prejudice was written by Jane Austen and first published in 1813."
ANSWERS = {
    "plain": "Jane Austen is the author of Pride and Prejudice, which came out in 1813.",
    "natural": "that'd be jane austen, she dropped pride and prejudice back in 1813 and it still goes hard "
    "ngl, the enemies to lovers arc is unmatched",
    "caricature": "Okay bestie 💅✨ Pride and Prejudice was written by Jane Austen and first published in "
    "1813. No cap, periodt 🔥🔥",
    "wrong_number": "jane austen wrote it and it came out in 1815, the blueprint for every slow burn romance",
    "wrong_name": "charlotte bronte wrote pride and prejudice in 1813, absolute classic",
    "loop": "Jane Austen wrote it. Jane Austen wrote it. Jane Austen wrote it. Jane Austen wrote it. "
    "Jane Austen wrote it. Jane Austen wrote it.",
    "offtopic": "ngl i haven't read a book since like 2019, my attention span is cooked, tiktok ate my brain",
    "cut_off": "Pride and Prejudice was written by",
    "spam": "💅💅 slay bestie no cap 💀💀 periodt ✨✨ fr fr",
}


def test_numbers_are_values_however_written() -> None:
    assert numbers("about 299,792 km/s, roughly 300k") == {299792.0, 300000.0}
    assert numbers("1 000 people, twenty-five kids, the 16th century, 95%") == {1000.0, 25.0, 16.0, 95.0}
    assert numbers("330m tall") == {330.0, 330e6}  # metres or millions: both readings kept
    assert numbers("one of the best") == set()


def test_fact_check_catches_a_changed_number_and_a_missing_name() -> None:
    right = check_facts(ANSWERS["natural"], REFERENCE, INSTRUCTION)
    assert (right.numbers_kept, right.numbers_contradicted, right.names_kept, right.score) == (
        1.0,
        0,
        1.0,
        1.0,
    )
    number = check_facts(ANSWERS["wrong_number"], REFERENCE, INSTRUCTION)
    assert (number.numbers_kept, number.numbers_contradicted) == (0.0, 1)
    assert number.score < 0.5 * right.score
    assert check_facts(ANSWERS["wrong_name"], REFERENCE, INSTRUCTION).names_kept == 0.0
    # a number the question's context gives is supported, but the reference's own number is still expected
    ctx = check_facts(
        "platform 2", "The train leaves from platform 4.", "Which platform?", "Moved from platform 2 to 4."
    )
    assert (ctx.numbers_contradicted, ctx.numbers_kept) == (0, 0.0)
    # a possessive names the same thing ("the Sun's heat" keeps "the Sun")
    own = check_facts("the Sun’s heat lifts it", "The Sun evaporates water.", "What drives the water cycle?")
    assert (own.names_kept, own.names_contradicted) == (1.0, 0)


def test_fact_check_forgives_what_is_right() -> None:
    """A short or abbreviated name, a surname, correct extra detail, acronyms of slang and units are no
    contradiction; a different name where the reference's is missing is."""
    ref, q = "The United States bought Alaska from Russia in 1867.", "Who bought Alaska?"
    assert check_facts("the US did, from russia, in 1867", ref, q).score == 1.0
    extra = check_facts(
        "the US bought it from Russia in 1867 for 7.2 million dollars, NGL a steal ASAP", ref, q
    )
    assert extra.score == 1.0
    armstrong = "Neil Armstrong was the first person to walk on the Moon, in 1969."
    assert check_facts("armstrong, 1969", armstrong, "Who first walked on the Moon?").score == 1.0
    assert (
        check_facts("Water boils at 100 °C at sea level.", "Water boils at 100 °C at sea level.", "?").score
        == 1.0
    )
    swapped = check_facts("Canada bought Alaska from Russia in 1867.", ref, q)
    assert (swapped.names_kept, swapped.names_contradicted) == (0.5, 1) and swapped.score < 0.3


def test_coherence_punishes_structure_not_register() -> None:
    fluent = [coherence(ANSWERS[k], 0.0) for k in ("plain", "natural", "wrong_number", "offtopic")]
    assert min(fluent) == 1.0  # slang, lowercase and a missing full stop are not faults
    assert coherence(ANSWERS["loop"], 0.0) < 0.2
    assert coherence(ANSWERS["spam"], 0.0) < 0.3
    assert coherence("1889 bestie 🗼", 0.0) == 1.0  # one emoji is free
    assert coherence(ANSWERS["plain"], 1.0) == 0.5  # what the ending model is sure was cut off


@pytest.fixture(scope="module")
def judge_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("offline-judge")


@pytest.fixture(scope="module")
def scores(judge_cache: Path) -> dict[str, dict]:
    judge = OfflineJudge(OfflineJudgeConfig(), read_corpus(ROOT / "data/genz_corpus.jsonl"), judge_cache)
    assert min(judge.style.heldout_accuracy.values()) >= 0.85
    out = judge.score([Item(INSTRUCTION, "", a, REFERENCE) for a in ANSWERS.values()])
    return dict(zip(ANSWERS, out, strict=True))


def test_style_puts_natural_gen_z_above_a_caricature_above_plain(scores: dict[str, dict]) -> None:
    style = {k: v["genz_style"] for k, v in scores.items()}
    assert style["natural"] > 0.6 > style["caricature"] > style["plain"]
    assert style["plain"] < 0.2


def test_helpfulness_puts_the_right_facts_above_wrong_ones_and_non_answers(scores: dict[str, dict]) -> None:
    help_ = {k: v["helpfulness"] for k, v in scores.items()}
    for good in ("plain", "natural", "caricature"):
        for bad in ("wrong_number", "wrong_name", "loop", "offtopic", "cut_off", "spam"):
            assert help_[good] > help_[bad], (good, bad)
    assert max(help_["offtopic"], help_["spam"]) < 0.1


def test_the_ending_model_hears_a_cut_it_never_saw(scores: dict[str, dict]) -> None:
    """The cut-off answer stops mid-sentence on "by", a word no list names: the model's probability, fitted
    only on the corpus's own texts and their random cuts, puts it below every finished answer."""
    cut = {k: v["parts"]["cut_off"] for k, v in scores.items()}
    assert cut["cut_off"] > 0.5 > max(cut[k] for k in ("plain", "natural", "wrong_number", "caricature"))
    coh = {k: v["coherence"] for k, v in scores.items()}
    assert coh["cut_off"] < 0.6 and coh["cut_off"] < min(coh[k] for k in ("plain", "natural", "wrong_number"))


def test_loops_score_lowest_on_coherence(scores: dict[str, dict]) -> None:
    coh = {k: v["coherence"] for k, v in scores.items()}
    assert min(coh, key=coh.__getitem__) == "loop"
    assert all(
        0.0 <= v[c] <= 1.0 for v in scores.values() for c in ("genz_style", "helpfulness", "coherence")
    )


def test_a_second_judge_reuses_the_cut_lm_and_the_fit(judge_cache: Path, scores: dict[str, dict]) -> None:
    saved = sorted(p.name.split("-")[0] for p in judge_cache.iterdir())
    assert saved == ["ending", "lm", "style"]  # one cut LM, two fitted models
    again = OfflineJudge(OfflineJudgeConfig(), read_corpus(ROOT / "data/genz_corpus.jsonl"), judge_cache)
    out = again.score([Item(INSTRUCTION, "", a, REFERENCE) for a in ANSWERS.values()])
    assert [o["genz_style"] for o in out] == pytest.approx(
        [scores[k]["genz_style"] for k in ANSWERS], abs=1e-6
    )
