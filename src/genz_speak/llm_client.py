"""Calls to any OpenAI-compatible server through the `openai` client, with bounded concurrency and retries.

Shared by the openai teacher and the LLM judge. The key is read from the environment variable whose
*name* is configured, so it never enters params, logs or metrics. `EndpointPool` spreads requests over
several servers of one model (vLLM replicas, say) and takes failing ones out of rotation for a while.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
from openai.types.chat import ChatCompletion
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from genz_speak.errors import InputError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MalformedReply(ValueError):
    """The server answered 2xx but the reply is unusable."""


class NotJSONBody(MalformedReply):
    """A 200 whose body is not a JSON chat completion (a proxy's error page), whatever its content type."""


class NoContent(MalformedReply):
    """A chat completion without a message: no choices, or null or empty content."""


RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
    openai.APIResponseValidationError,
    MalformedReply,
)


# Failures that say something about the endpoint rather than the request: a reply with no content is the
# model's doing (retried, but it does not count against the server); a body that is not JSON is not.
ENDPOINT_FAULTS = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
    openai.APIResponseValidationError,
    NotJSONBody,
)


def fault_label(err: BaseException) -> str:
    """How metrics name a failed request: its HTTP status, or the error's class."""
    if isinstance(err, openai.APIStatusError):
        return f"HTTP {err.status_code}"
    return type(err).__name__


def make_client(base_url: str | None, api_key_env: str, timeout: float) -> openai.OpenAI:
    key = os.environ.get(api_key_env)
    if not key:
        if base_url is None:
            raise InputError(
                f"the OpenAI API needs a key: export {api_key_env}=... "
                "(the params name the variable, never the key)"
            )
        key = "unused"  # local OpenAI-compatible servers usually accept any key
    # Retries are ours (tenacity), so the client's own are off and every retry is counted once.
    return openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)


@dataclass
class Endpoint:
    url: str | None
    client: openai.OpenAI
    in_flight: int = 0
    failures: int = 0  # consecutive endpoint faults
    out_until: float | None = None  # out of rotation until then; None: in rotation
    probing: bool = False  # the one request that tries it again after its cooldown is in flight
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "faults": 0, "taken_out": 0})


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
    ):
        self.endpoints = [Endpoint(url, make_client(url, api_key_env, timeout)) for url in urls]
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
                self._cond.wait(timeout=min(ends) if ends else None)

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
                        e.url, self.cooldown, e.failures, type(error).__name__,
                    )  # fmt: skip
            elif error is None or isinstance(error, (openai.APIStatusError, MalformedReply)):  # it answered
                if e.out_until is not None:
                    log.info("endpoint %s: answered again, back in rotation", e.url)
                e.failures, e.out_until = 0, None
            self._cond.notify_all()

    @contextmanager
    def client(self) -> Iterator[openai.OpenAI]:
        """A slot on an endpoint in rotation, for one request; how the request ends decides its health."""
        e = self._acquire()
        try:
            yield e.client
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


def _retry_after(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(value), 60.0) if value is not None else None
    except ValueError:
        return None


class _WaitRetryAfter:
    """Exponential backoff with jitter, replaced by the server's Retry-After when it sends one."""

    def __init__(self, initial: float, maximum: float):
        self.backoff = wait_exponential_jitter(initial=initial, max=maximum)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = _retry_after(exc)
        return after if after is not None else self.backoff(state)


@dataclass(frozen=True)
class CallResult:
    value: Any
    error: str | None
    retries: int
    faults: dict[str, int]  # failed tries by `fault_label`: the retries, and the last try when it failed


def call_with_retries(fn: Callable[[], R], max_retries: int, initial_wait: float = 0.5) -> CallResult:
    """Run `fn`, retrying retryable failures; never raises for them: the last error is returned instead."""
    attempts = 0
    faults: Counter[str] = Counter()
    retrying = Retrying(
        stop=stop_after_attempt(max_retries + 1),
        wait=_WaitRetryAfter(initial_wait, 20.0),
        retry=retry_if_exception(lambda e: isinstance(e, RETRYABLE)),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                attempts += 1
                try:
                    value = fn()
                except Exception as err:
                    faults[fault_label(err)] += 1
                    raise
        return CallResult(value, None, attempts - 1, dict(faults))
    except RETRYABLE as err:
        error = f"{type(err).__name__}: {err}"
        if isinstance(err, openai.APIConnectionError) and err.__cause__ is not None:
            # "Connection error." alone does not tell a reset from a body cut short.
            error += f" ({type(err.__cause__).__name__}: {err.__cause__})"
        return CallResult(None, error[:300], attempts - 1, dict(faults))
    except openai.APIStatusError as err:  # 4xx other than 429: retrying will not help
        error = f"{type(err).__name__} {err.status_code}: {err.message}"[:300]
        return CallResult(None, error, attempts - 1, dict(faults))


def map_concurrent(fn: Callable[[T], R], items: Iterable[T], concurrency: int) -> Iterator[tuple[T, R]]:
    """Apply `fn` with at most `concurrency` calls in flight; yield (item, result) as each finishes."""
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        futures = {pool.submit(fn, item): item for item in items}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    finally:
        # An early exit (SIGTERM, Ctrl-C, an error downstream) drops the requests not yet sent; only
        # those in flight are waited for, so a stop takes one request's time, not the whole queue's.
        pool.shutdown(wait=True, cancel_futures=True)


def sampling_args(
    model: str, temperature: float, top_p: float | None = None, max_tokens: int | None = None
) -> dict[str, Any]:
    """Sampling arguments of a chat completion for `model`. OpenAI's gpt-5 family (reasoning models)
    refuses any temperature or top_p but its default and counts output as `max_completion_tokens`; other
    servers take the classic arguments."""
    if model.startswith("gpt-5"):
        return {} if max_tokens is None else {"max_completion_tokens": max_tokens}
    args: dict[str, Any] = {"temperature": temperature}
    if top_p is not None:
        args["top_p"] = top_p
    if max_tokens is not None:
        args["max_tokens"] = max_tokens
    return args


def chat_request(
    model: str,
    messages: list[dict[str, str]],
    *,
    temperature: float,
    top_p: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    response_format: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The arguments of one chat completion request to `model` (the teacher's and the judge's alike)."""
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        **sampling_args(model, temperature, top_p, max_tokens),
    }
    if seed is not None:
        request["seed"] = seed
    if response_format is not None:
        request["response_format"] = response_format
    return request


def complete(client: openai.OpenAI, **kwargs: Any) -> ChatCompletion:
    """One chat completion request. A 200 that is not a chat completion raises NotJSONBody (retried): for a
    body labelled application/json that is not JSON the client raises JSONDecodeError, and for any other
    content type it hands back the body as a string."""
    try:
        resp = client.chat.completions.create(**kwargs)
    except json.JSONDecodeError as err:
        raise NotJSONBody(f"200 reply whose body is not JSON: {err.doc[:80]!r}") from None
    if not isinstance(resp, ChatCompletion):
        raise NotJSONBody(f"200 reply that is not a JSON chat completion: {str(resp)[:80]!r}")
    return resp


def chat_text(resp: ChatCompletion) -> str:
    """The first choice's text, or NoContent (retried) when the completion has none."""
    choices = resp.choices
    if not choices or choices[0].message is None or not (choices[0].message.content or "").strip():
        raise NoContent("reply has no choices" if not choices else "reply has no message content")
    return choices[0].message.content
