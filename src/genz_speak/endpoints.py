"""The endpoints of an OpenAI-compatible model (one server, or replicas of one model): who answers at each
(its identity, from a pre-flight GET /models), and a pool that spreads requests over them and takes
failing ones out of rotation for a while."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import openai

from genz_speak.errors import StageFailed
from genz_speak.llm_client import ENDPOINT_FAULTS, Interrupted, MalformedReply, describe, make_client

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    url: str | None
    client: openai.OpenAI
    in_flight: int = 0
    failures: int = 0  # consecutive endpoint faults
    out_until: float | None = None  # out of rotation until then; None: in rotation
    probing: bool = False  # the one request that tries it again after its cooldown is in flight
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "faults": 0, "taken_out": 0})
    # Who answers here: the normalised URL and the server's description of the model, hashed (`preflight`).
    identity: str = ""


class EndpointPool:
    """OpenAI-compatible endpoints serving one model, each with at most `concurrency` requests in flight.

    A request takes a slot on the least busy endpoint in rotation (waiting while none is free).
    `max_failures` consecutive faults (connection errors, timeouts, 5xx, 429) take an endpoint out of
    rotation for `cooldown` seconds; then a single request tries it again: a success puts it back, a fault
    takes it out for another cooldown. Callers retry a failed request through the pool, so the retry lands
    on an endpoint in rotation. With one endpoint there is nothing to rotate to: only retries' backoff.
    """

    def __init__(
        self,
        urls: list[str | None],
        api_key_env: str,
        timeout: float,
        concurrency: int,
        max_failures: int = 3,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        role: str = "generate.base_url",
    ):
        self.endpoints = [Endpoint(url, make_client(url, api_key_env, timeout)) for url in urls]
        for e in self.endpoints:
            e.identity = identity(e.url, None)
        self.api_key_env, self.timeout = api_key_env, timeout
        self.role = role  # the params key that names the endpoints, for messages
        self.stopping = threading.Event()  # set when the run stops: no new request starts
        self.concurrency = concurrency
        self.max_failures = max_failures if len(urls) > 1 else None
        self.cooldown = cooldown
        self.clock = clock
        self._cond = threading.Condition()

    def _usable(self, e: Endpoint, now: float) -> bool:
        if e.in_flight >= self.concurrency:
            return False
        return e.out_until is None or (now >= e.out_until and not e.probing)

    def _acquire(self) -> Endpoint:
        with self._cond:
            while True:
                if self.stopping.is_set():
                    raise Interrupted
                now = self.clock()
                usable = [e for e in self.endpoints if self._usable(e, now)]
                if usable:
                    e = min(usable, key=lambda e: e.in_flight)
                    e.in_flight += 1
                    e.stats["requests"] += 1
                    e.probing = e.out_until is not None
                    return e
                # Wait for a free slot, or for the first cooldown to end.
                ends = [
                    e.out_until - now for e in self.endpoints if e.out_until is not None and e.out_until > now
                ]
                self._cond.wait(timeout=min(ends) if ends else 1.0)  # 1 s: to notice `stopping`

    def _release(self, e: Endpoint, error: BaseException | None) -> None:
        with self._cond:
            e.in_flight -= 1
            e.probing = False
            if isinstance(error, ENDPOINT_FAULTS):
                e.stats["faults"] += 1
                e.failures += 1
                if self.max_failures is not None and (
                    e.out_until is not None or e.failures >= self.max_failures
                ):
                    if e.out_until is None:
                        e.stats["taken_out"] += 1
                    e.out_until = self.clock() + self.cooldown
                    log.warning(
                        "endpoint %s: out of rotation for %.0f s after %d fault(s) in a row (last: %s)",
                        e.url, self.cooldown, e.failures, describe(error),
                    )  # fmt: skip
            elif error is None or isinstance(error, (openai.APIStatusError, MalformedReply)):  # it answered
                if e.out_until is not None:
                    log.info("endpoint %s: answered again, back in rotation", e.url)
                e.failures, e.out_until = 0, None
            self._cond.notify_all()

    @contextmanager
    def client(self) -> Iterator[Endpoint]:
        """A slot on an endpoint in rotation, for one request (its `client`, and its `identity` to record
        with what it answers); how the request ends decides the endpoint's health."""
        e = self._acquire()
        try:
            yield e
        except BaseException as err:
            self._release(e, err)
            raise
        self._release(e, None)

    @property
    def total_concurrency(self) -> int:
        return self.concurrency * len(self.endpoints)

    def stats(self) -> list[dict[str, Any]]:
        return [{"url": e.url, **e.stats} for e in self.endpoints]

    def close(self) -> None:
        for e in self.endpoints:
            e.client.close()

    def identities(self) -> frozenset[str]:
        """Every endpoint's identity: a cached answer is reused only when one of these wrote it."""
        return frozenset(e.identity for e in self.endpoints)

    def preflight(self, model: str) -> None:
        """Ask each endpoint for its models (GET /models) before any request: an endpoint that cannot be
        reached is reported at once rather than after every row's retries, a refused key likewise, and
        each endpoint's identity takes in the server's own description of `model`. StageFailed when no
        endpoint can be reached or the key is refused; a server without /models is not an error."""
        down: list[str] = []
        for e in self.endpoints:
            try:
                e.identity = identity(e.url, describe_model(e, model, min(self.timeout, 10.0)))
            except _Unreachable as err:
                down.append(f"{e.url or OPENAI_URL}: {err}")
                log.warning("%s: %s does not answer (%s)", self.role, e.url or OPENAI_URL, err)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                raise StageFailed(
                    f"{self.role}: {e.url or OPENAI_URL} refused the key in ${self.api_key_env} "
                    f"({describe(err)}); export the right key"
                ) from None
        if len(down) == len(self.endpoints):
            raise StageFailed(
                f"{self.role}: cannot reach {'; '.join(down)}; is the server running, and is the URL right?"
            )


OPENAI_URL = "https://api.openai.com/v1"
# The fields of a /models entry that say what answers (vLLM adds root, parent and max_model_len); never
# `created` or permissions, which change on every restart.
MODEL_FIELDS = ("id", "owned_by", "root", "parent", "max_model_len")


class _Unreachable(Exception):
    pass


def normalised_url(url: str | None) -> str:
    """scheme://host:port/path, lower-cased, default port spelled out, no trailing slash."""
    parts = urlsplit(url or OPENAI_URL)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}"


def identity(url: str | None, description: dict[str, Any] | None) -> str:
    """Who answers at `url`: its normalised URL and the server's description of the model, hashed."""
    blob = json.dumps([normalised_url(url), description], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe_model(e: Endpoint, model: str, timeout: float, tries: int = 3) -> dict[str, Any] | None:
    """The /models entry of `model` at `e` (MODEL_FIELDS of it), None when the server lists no such entry
    or has no /models; _Unreachable when nothing answers after `tries`; a refused key raises."""
    client = e.client.with_options(timeout=timeout, max_retries=0)
    for attempt in range(tries):
        try:
            listed = client.models.list()
            break
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            if attempt == tries - 1:
                raise _Unreachable(describe(err)) from None
            time.sleep(0.5 * 2**attempt)
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            raise
        except (openai.APIError, ValueError) as err:  # 404, 5xx, a body that is not a list: no description
            log.info(
                "%s: GET /models answered %s; the endpoint is identified by its URL", e.url, describe(err)
            )
            return None
    for entry in getattr(listed, "data", None) or []:
        data = entry.model_dump() if hasattr(entry, "model_dump") else dict(entry)
        if data.get("id") == model:
            return {k: data[k] for k in MODEL_FIELDS if data.get(k) is not None}
    return None


class EarlyStop:
    """Stops a run whose first `window` finished items all failed with the same error and none succeeded:
    a dead model name, a wrong path, a server failing every request. Without it, every row would take its
    whole retry budget (hours for a large dataset) to end in the same failure."""

    def __init__(self, window: int, where: str, noun: str = "rows"):
        self.window, self.where, self.noun = window, where, noun
        self.errors: list[str] = []
        self.decided = False  # a success, or a mix of errors: the run goes on
        self._lock = threading.Lock()

    def observe(self, error: str | None) -> None:
        """Record one finished item (None: it succeeded); StageFailed when the run should stop."""
        with self._lock:
            if self.decided:
                return
            if error is None:
                self.decided = True
                return
            self.errors.append(error)
            if len(set(self.errors)) > 1:
                self.decided = True
            elif len(self.errors) >= self.window:
                self.decided = True
                raise StageFailed(
                    f"{self.where}: the first {len(self.errors)} {self.noun} all failed after their retries "
                    f"with the same error, and none succeeded; stopping: {error}"
                )
