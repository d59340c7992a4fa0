import pytest

from genz_speak.judges.llm import parse_verdict
from genz_speak.llm_client import MalformedReply


def test_valid_verdict_and_code_fence() -> None:
    v = parse_verdict('```json\n{"genz_style": 8, "helpfulness": 7, "coherence": 10, "rationale": "ok"}\n```')
    assert v == {"genz_style": 8.0, "helpfulness": 7.0, "coherence": 10.0, "rationale": "ok"}


@pytest.mark.parametrize(
    "reply",
    [
        "not json at all",
        "[1, 2, 3]",
        '{"genz_style": 11, "helpfulness": 7, "coherence": 10}',
        '{"genz_style": -1, "helpfulness": 7, "coherence": 10}',
        '{"genz_style": "8", "helpfulness": 7, "coherence": 10}',
        '{"genz_style": true, "helpfulness": 7, "coherence": 10}',
        '{"helpfulness": 7, "coherence": 10}',
    ],
)
def test_invalid_verdicts_are_malformed(reply: str) -> None:
    with pytest.raises(MalformedReply):
        parse_verdict(reply)


def test_sampling_args_leave_gpt5_at_its_defaults() -> None:
    from genz_speak.llm_client import sampling_args

    assert sampling_args("gpt-5-mini", 0.7, 0.95, 384) == {"max_completion_tokens": 384}
    assert sampling_args("gpt-5-mini", 0.0) == {}
    assert sampling_args("Qwen/Qwen3-8B", 0.7, 0.95, 384) == {
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 384,
    }
    assert sampling_args("judge", 0.0) == {"temperature": 0.0}
