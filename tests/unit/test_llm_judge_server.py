"""The LLM judge against a real OpenAI-compatible server on 127.0.0.1, faults included."""

from pathlib import Path

from genz_speak.config import LLMJudgeConfig
from genz_speak.judges.llm import LLMJudge
from tests.openai_server import ScriptedServer, serve, verdict_for

ITEMS = [
    (f"Question {i}?", ("ngl it's true fr" if i % 2 else "It is true."), "It is true.") for i in range(12)
]


def judge_cfg(url: str, **kw: object) -> LLMJudgeConfig:
    settings: dict[str, object] = {"concurrency": 4, "request_timeout": 1.0, "max_retries": 3, **kw}
    return LLMJudgeConfig(model="judge", base_url=url, **settings)


def test_faults_are_retried_and_verdicts_cached(tmp_path: Path) -> None:
    script = ["ok", "429", "ok", "500", "ok", "not json", "ok", '{"genz_style": 42, "helpfulness": 1}', "ok"]
    server = ScriptedServer(script, verdict_for)
    with serve(server.app) as url:
        judge = LLMJudge(judge_cfg(url), tmp_path / "judge.jsonl")
        first = judge.judge(ITEMS)
        judge.close()
        assert all(j.scores is not None for j in first)  # every fault was retried into a verdict
        assert [j.scores["genz_style"] for j in first] == [0.9 if i % 2 else 0.1 for i in range(12)]
        assert all(j.scores["helpfulness"] == 0.6 for j in first)
        assert server.counts["429"] and server.counts["500"] and server.counts["not json"]
        assert judge.requests == server.counts["requests"] > 12
        before = server.counts["requests"]
        again = LLMJudge(judge_cfg(url), tmp_path / "judge.jsonl")
        second = again.judge(ITEMS)
        assert server.counts["requests"] == before and again.requests == 0  # a cached re-run asks nothing
        assert all(j.cached for j in second)
        assert [j.scores for j in second] == [j.scores for j in first]


def test_persistent_failure_is_recorded_not_raised(tmp_path: Path) -> None:
    server = ScriptedServer(["not json"], verdict_for)
    with serve(server.app) as url:
        judge = LLMJudge(judge_cfg(url, max_retries=2), tmp_path / "judge.jsonl")
        out = judge.judge(ITEMS[:3])
    assert all(j.scores is None and "MalformedReply" in (j.error or "") for j in out)
    assert server.counts["requests"] == 3 * 3  # the first try + 2 retries each


def test_reference_guided_shows_the_reference(tmp_path: Path) -> None:
    seen: list[str] = []

    def answer(messages: list[dict[str, str]]) -> str:
        seen.append(messages[-1]["content"])
        return verdict_for(messages)

    server = ScriptedServer(["ok"], answer)
    with serve(server.app) as url:
        LLMJudge(judge_cfg(url, reference_guided=True), tmp_path / "j.jsonl").judge(ITEMS[:1])
        LLMJudge(judge_cfg(url, reference_guided=False), tmp_path / "k.jsonl").judge(ITEMS[:1])
    assert "reference answer" in seen[0] and "reference answer" not in seen[1]
