"""generate.base_urls: the openai teacher spread over several real `genz-speak serve rules` processes on
127.0.0.1, with one of them dead, dying mid-run, or coming up late."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from genz_speak.config import GenerateConfig
from genz_speak.data.questions import validate_rows
from genz_speak.io import free_port, read_jsonl
from genz_speak.pipeline.generate import rewrite_splits
from genz_speak.teachers import build_teacher
from genz_speak.testing.serve import launch
from tests.conftest import ROOT, python_env, stage_process, write_prepared

pytestmark = pytest.mark.slow
SOURCE = validate_rows(read_jsonl(ROOT / "data/questions.jsonl"), "questions")


def rows(n: int) -> list[dict[str, Any]]:
    return [{**SOURCE[i % len(SOURCE)], "id": f"r{i}"} for i in range(n)]


@pytest.fixture
def servers() -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    yield started
    for proc, _ in started:
        proc.terminate()
        proc.wait(timeout=30)


def serve(started: list[tuple[subprocess.Popen[bytes], str]], *options: str, port: int | None = None) -> str:
    started.append(launch("rules", *options, env=python_env(), port=port))
    return started[-1][1]


def requests_seen(url: str) -> int:
    return int(httpx.get(f"{url}/stats").json().get("requests", 0))


def run_generate(tmp_path: Path, n: int, **settings: Any) -> dict[str, Any]:
    cfg = GenerateConfig(teacher="openai", model="rules", max_reject_fraction=1.0, **settings)
    splits = {"train": rows(n)}
    metrics = rewrite_splits(cfg, splits, build_teacher(cfg), tmp_path / "out", tmp_path / "cache.jsonl")
    metrics |= metrics.pop("run")  # how the run went, beside what it made
    metrics["dataset"] = read_jsonl(tmp_path / "out/genz_dataset.jsonl")
    return metrics


def test_stage_spreads_rows_over_two_servers(servers: list[Any], tmp_path: Path) -> None:
    """The generate stage as dvc.yaml runs it, with base_urls: both servers answer, every row once, and
    the dataset is the one a single server gives."""
    a = serve(servers, "--latency", "0.05")
    b = serve(servers, "--latency", "0.05")
    src = rows(40)
    write_prepared(tmp_path, src[:30], src[30:35], src[35:])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"].update(teacher="openai", model="rules", base_urls=[a, b], concurrency=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage_process(tmp_path, "generate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics/run/generate.json").read_text())
    per_endpoint = {e["url"]: e for e in metrics["endpoints"]}
    assert set(per_endpoint) == {a, b}
    assert requests_seen(a) == per_endpoint[a]["requests"] > 0
    assert requests_seen(b) == per_endpoint[b]["requests"] > 0
    assert requests_seen(a) + requests_seen(b) == metrics["teacher_calls"] == 40
    dataset = read_jsonl(tmp_path / "data/generate/genz_dataset.jsonl")

    single = run_generate(tmp_path / "single", 40, base_url=a)
    assert {r["instruction"]: r["output"] for r in dataset} == {
        r["instruction"]: r["output"] for r in single["dataset"]
    }


def test_adding_a_replica_reuses_every_cached_rewrite(servers: list[Any], tmp_path: Path) -> None:
    """Issue 23, point 1: cached rewrites are reused when the server that wrote them is among this run's
    endpoints, so adding a replica costs nothing; dropping the one that wrote them pays again."""
    a = serve(servers)
    b = serve(servers)
    first = run_generate(tmp_path, 20, base_url=a)
    grown = run_generate(tmp_path, 20, base_urls=(a, b))
    without_a = run_generate(tmp_path, 20, base_urls=(b,))
    assert (first["teacher_calls"], grown["teacher_calls"], without_a["teacher_calls"]) == (20, 0, 20)
    assert (requests_seen(a), requests_seen(b)) == (20, 20)


def test_a_dead_endpoint_is_taken_out_and_every_row_still_completes(
    servers: list[Any], tmp_path: Path
) -> None:
    alive = serve(servers, "--latency", "0.02")
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    m = run_generate(
        tmp_path, 60, base_urls=(dead, alive), concurrency=2, endpoint_max_failures=2, endpoint_cooldown=600.0
    )
    assert m["rows"] == 60 and m["teacher_failures"] == 0
    per_endpoint = {e["url"]: e for e in m["endpoints"]}
    # Out after 2 faults in a row, and (a 600 s cooldown) never tried again: at most the 2 slots' requests.
    assert per_endpoint[dead]["taken_out"] == 1
    assert 2 <= per_endpoint[dead]["requests"] == per_endpoint[dead]["faults"] <= 2 + 1
    assert per_endpoint[alive]["faults"] == 0 and requests_seen(alive) == 60


def test_an_endpoint_dying_mid_run_is_left_for_the_other(servers: list[Any], tmp_path: Path) -> None:
    a = serve(servers, "--latency", "0.05")
    b = serve(servers, "--latency", "0.05")
    killer = threading.Timer(1.0, servers[1][0].kill)
    killer.start()
    m = run_generate(
        tmp_path, 120, base_urls=(a, b), concurrency=2, endpoint_max_failures=2, endpoint_cooldown=600.0,
        request_timeout=2.0,
    )  # fmt: skip
    killer.join()
    assert m["rows"] == 120 and m["teacher_failures"] == 0
    per_endpoint = {e["url"]: e for e in m["endpoints"]}
    assert per_endpoint[b]["taken_out"] == 1 and per_endpoint[b]["requests"] >= 2
    assert per_endpoint[a]["requests"] > 60  # it took over the rest


def test_an_endpoint_that_comes_back_is_tried_again_and_rejoins(servers: list[Any], tmp_path: Path) -> None:
    a = serve(servers, "--latency", "0.05")
    late_port = free_port()
    late = f"http://127.0.0.1:{late_port}/v1"

    def start_late() -> None:
        # Once the first rewrite is cached, the pre-flight found the late server down (a fixed delay raced
        # the run's own start-up on a busy machine).
        while not (tmp_path / "cache.jsonl").exists():
            time.sleep(0.02)
        serve(servers, "--latency", "0.05", port=late_port)

    starter = threading.Thread(target=start_late)
    starter.start()
    start = time.monotonic()
    m = run_generate(
        tmp_path, 240, base_urls=(a, late), concurrency=2, endpoint_max_failures=1, endpoint_cooldown=1.0
    )
    starter.join()
    assert m["rows"] == 240 and m["teacher_failures"] == 0
    per_endpoint = {e["url"]: e for e in m["endpoints"]}
    assert per_endpoint[late]["taken_out"] >= 1  # down at first ...
    assert requests_seen(late) > 0  # ... then tried after its cooldown, answered, and back in rotation
    assert requests_seen(late) + requests_seen(a) == 240
    assert time.monotonic() - start < 120
