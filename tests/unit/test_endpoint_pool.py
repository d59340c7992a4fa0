"""EndpointPool's rotation rules on a controlled clock (the real-server behaviour is in
tests/stages/test_generate_replicas.py)."""

from __future__ import annotations

import httpx
import openai
import pytest

from genz_speak.endpoints import EndpointPool


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fault() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=httpx.Request("POST", "http://x/v1/chat/completions"))


def use(pool: EndpointPool, error: BaseException | None = None) -> str | None:
    """One request through the pool, ending in `error` (or a success); the endpoint it took."""
    taken = pool._acquire()
    pool._release(taken, error)
    return taken.url


@pytest.fixture
def pool() -> tuple[EndpointPool, Clock]:
    clock = Clock()
    return EndpointPool(["http://a/v1", "http://b/v1"], "NO_KEY", 1.0, 2, 2, 10.0, clock), clock


def test_least_busy_first_and_a_slot_limit_per_endpoint(pool: tuple[EndpointPool, Clock]) -> None:
    p, _ = pool
    taken = [p._acquire() for _ in range(4)]
    assert [e.url for e in taken] == ["http://a/v1", "http://b/v1", "http://a/v1", "http://b/v1"]
    assert all(e.in_flight == 2 for e in p.endpoints)  # concurrency 2 each: a fifth request would wait


def test_faults_in_a_row_take_an_endpoint_out_then_one_probe_brings_it_back(
    pool: tuple[EndpointPool, Clock],
) -> None:
    p, clock = pool
    a, b = p.endpoints
    a.failures = 1
    p._release(p._acquire(), fault())  # a's second fault in a row: out for 10 s
    assert a.out_until == 10.0 and a.stats["taken_out"] == 1
    assert {use(p) for _ in range(5)} == {"http://b/v1"}  # only b meanwhile
    clock.now = 10.0
    probe = p._acquire()
    assert probe is a and a.probing  # the cooldown is over: one request tries a ...
    assert p._acquire() is b  # ... and only one: the next goes to b
    p._release(probe, None)  # it answered: back in rotation
    assert a.out_until is None and a.failures == 0


def test_a_failed_probe_takes_it_out_for_another_cooldown(pool: tuple[EndpointPool, Clock]) -> None:
    p, clock = pool
    a, _ = p.endpoints
    a.out_until, a.failures = 10.0, 2
    clock.now = 10.0
    probe = p._acquire()
    assert probe is a
    p._release(probe, fault())
    assert a.out_until == 20.0 and a.stats["taken_out"] == 0  # still the same time out, extended


def test_a_request_error_does_not_count_against_the_endpoint(pool: tuple[EndpointPool, Clock]) -> None:
    p, _ = pool
    a, _ = p.endpoints
    a.failures = 1
    bad_request = openai.BadRequestError(
        "bad", response=httpx.Response(400, request=httpx.Request("POST", "http://a/v1")), body=None
    )
    p._release(p._acquire(), bad_request)  # the server answered (400): alive
    assert a.failures == 0 and a.out_until is None


def test_one_endpoint_is_never_taken_out() -> None:
    p = EndpointPool(["http://a/v1"], "NO_KEY", 1.0, 2, 1, 10.0, Clock())
    for _ in range(5):
        use(p, fault())
    assert p.endpoints[0].out_until is None and p.endpoints[0].stats["faults"] == 5
