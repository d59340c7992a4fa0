import pytest

from genz_speak.config import ValidationConfig
from genz_speak.teachers.base import TeacherRequest, TeacherResult
from genz_speak.teachers.rules import RulesTeacher, stylize
from genz_speak.teachers.validate import numbers, rejection_reason

SRC = "The Eiffel Tower was completed in 1889 and is 330 metres tall. It was very popular."


def test_stylize_is_deterministic_and_keeps_facts() -> None:
    out = stylize(SRC, "q-1")
    assert out == stylize(SRC, "q-1")
    assert out != SRC
    for fact in ("Eiffel Tower", "1889", "330 metres"):
        assert fact in out
    assert "hella" in out  # "very" swapped
    assert rejection_reason(SRC, "", out, ValidationConfig(keep_entities=True)) is None


def test_stylize_varies_by_key() -> None:
    outs = {stylize(SRC, f"q-{i}") for i in range(20)}
    assert len(outs) > 5


class Collect:
    """A journal that keeps what the teacher reports."""

    def __init__(self) -> None:
        self.results: list[TeacherResult] = []

    def sent(self, id: str, endpoint: str) -> None:
        raise AssertionError("the rules teacher sends no request")

    def done(self, result: TeacherResult) -> None:
        self.results.append(result)


def test_rules_teacher_reports_one_result_per_request() -> None:
    reqs = [TeacherRequest(id=f"q-{i}", row={"response": SRC}, messages=[]) for i in range(3)]
    journal = Collect()
    RulesTeacher().rewrite(reqs, journal)
    results = journal.results
    assert [r.id for r in results] == ["q-0", "q-1", "q-2"]
    assert all(r.text and r.error is None for r in results)


def test_validation_reasons() -> None:
    cfg = ValidationConfig(keep_entities=True)
    assert rejection_reason(SRC, "", "", cfg).startswith("too short")
    assert rejection_reason(SRC, "", "x" * 2000, cfg).startswith("too long")
    assert rejection_reason(SRC, "", "I'm sorry, but I cannot rewrite this.", cfg) == "refusal"
    assert "echo of the source" in rejection_reason(SRC, "", SRC, cfg)
    assert (
        rejection_reason(SRC, "", "ngl the Eiffel Tower dropped in 1889, hella tall fr", cfg)
        == "lost numbers: ['330']"
    )
    lost = rejection_reason(SRC, "", "ngl the tower dropped in 1889 and it's 330 metres, iconic", cfg)
    assert lost == "lost names: ['Eiffel']"  # 'tower' is there, lowercased
    assert (
        rejection_reason(
            "Numbers like 1,000 count.", "", "ngl numbers like 1000 count fr", ValidationConfig()
        )
        is None
    )


def test_short_answers_may_get_a_real_rewrite() -> None:
    """NQ-style answers ("2018", a name) are short; a real teacher's rewrite of them runs to a couple of
    hundred characters, which the ratio alone (4 x max(len, 40) = 160) called too long."""
    rewrite = (
        "ok so bestie it was 2018, no cap. that's the year it dropped and honestly it hit different, "
        "everyone was lowkey obsessed and we're still talking about it fr fr, iconic behaviour tbh"
    )
    assert len(rewrite) > 160
    assert rejection_reason("2018", "", rewrite, ValidationConfig()) is None
    assert rejection_reason("2018", "", "2018 " + "x" * 500, ValidationConfig()).startswith("too long")
    long_source = "The answer is 2018. " * 30  # the ratio still governs long sources
    assert rejection_reason(
        long_source, "", "2018 " + "y" * (4 * len(long_source)), ValidationConfig()
    ).startswith("too long")


@pytest.mark.parametrize("sep", [" ", "\u00a0", "\u202f", "\u2009", ","])
def test_thousands_separators_do_not_split_a_number(sep: str) -> None:
    assert numbers(f"about 1{sep}000 people, 12{sep}345{sep}678 in all") == {"1000", "12345678"}
    cfg = ValidationConfig()
    assert rejection_reason(f"It has 1{sep}000 rooms.", "", "ngl it has like 1,000 rooms fr", cfg) is None
    assert rejection_reason("It has 1,000 rooms.", "", f"ngl it has like 1{sep}000 rooms fr", cfg) is None


def test_numbers_side_by_side_stay_apart() -> None:
    assert numbers("in 2018 100 people came") == {"2018", "100"}
    assert numbers("between 5 and 10 000") == {"5", "10000"}
    assert numbers("pi is 3.14") == {"3.14"}


def test_stylize_keeps_every_number_and_name_of_the_shipped_questions() -> None:
    """Over the whole shipped question set: every number and every capitalised word of the source is in the
    rewrite (a capitalised word only changes case when it starts the answer and is an ordinary word), and
    the rewrite passes validation with keep_entities on."""
    import re

    from genz_speak.data.dataset import validate_row
    from genz_speak.io import read_jsonl
    from genz_speak.teachers.rules import _COMMON_STARTS
    from genz_speak.teachers.validate import numbers
    from tests.conftest import ROOT

    rows = read_jsonl(ROOT / "data/questions.jsonl", check=validate_row)
    assert len(rows) == 209
    for row in rows:
        src = row["response"]
        out = stylize(src, row["id"])
        assert numbers(src) <= numbers(out), (src, out)
        for word in set(re.findall(r"\b[A-Z][\w'-]*", src)):
            if word not in out:
                assert src.startswith(word) and word.lower() in _COMMON_STARTS, (word, src, out)
        assert rejection_reason(src, "", out, ValidationConfig()) is None, out


def test_swaps_leave_names_alone() -> None:
    out = stylize("The Great Barrier Reef is very great. Great Britain has good food.", "q-9")
    assert "Great Barrier Reef" in out and "Great Britain" in out
    assert "hella elite" in out and "solid food" in out


def test_names_are_kept_in_any_case() -> None:
    src = "Pride and Prejudice was written by Jane Austen in 1813."
    assert (
        rejection_reason(src, "", "jane austen wrote pride and prejudice in 1813 fr", ValidationConfig())
        is None
    )
    assert rejection_reason(
        src, "", "charlotte bronte wrote pride and prejudice in 1813", ValidationConfig()
    ) == ("lost names: ['Austen', 'Jane']")
