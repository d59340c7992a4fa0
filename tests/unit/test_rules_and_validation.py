from genz_speak.config import ValidationConfig
from genz_speak.teachers.base import TeacherRequest
from genz_speak.teachers.rules import RulesTeacher, stylize
from genz_speak.teachers.validate import check

SRC = "The Eiffel Tower was completed in 1889 and is 330 metres tall. It was very popular."


def test_stylize_is_deterministic_and_keeps_facts() -> None:
    out = stylize(SRC, "q-1")
    assert out == stylize(SRC, "q-1")
    assert out != SRC
    for fact in ("Eiffel Tower", "1889", "330 metres"):
        assert fact in out
    assert "hella" in out  # "very" swapped
    assert check(SRC, "", out, ValidationConfig(keep_entities=True)) is None


def test_stylize_varies_by_key() -> None:
    outs = {stylize(SRC, f"q-{i}") for i in range(20)}
    assert len(outs) > 5


def test_rules_teacher_yields_one_result_per_request() -> None:
    reqs = [TeacherRequest(id=f"q-{i}", row={"response": SRC}, messages=[]) for i in range(3)]
    results = list(RulesTeacher().rewrite(reqs))
    assert [r.id for r in results] == ["q-0", "q-1", "q-2"]
    assert all(r.text and r.error is None for r in results)


def test_validation_reasons() -> None:
    cfg = ValidationConfig(keep_entities=True)
    assert check(SRC, "", "", cfg).startswith("too short")
    assert check(SRC, "", "x" * 2000, cfg).startswith("too long")
    assert check(SRC, "", "I'm sorry, but I cannot rewrite this.", cfg) == "refusal"
    assert "echo of the source" in check(SRC, "", SRC, cfg)
    assert (
        check(SRC, "", "ngl the Eiffel Tower dropped in 1889, hella tall fr", cfg) == "lost numbers: ['330']"
    )
    lost = check(SRC, "", "ngl the tower dropped in 1889 and it's 330 metres, iconic", cfg)
    assert lost == "lost names: ['Eiffel', 'Tower']"
    assert (
        check("Numbers like 1,000 count.", "", "ngl numbers like 1000 count fr", ValidationConfig()) is None
    )
