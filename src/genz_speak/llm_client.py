"""Calls to any OpenAI-compatible server through the `openai` client, with bounded concurrency and retries.

Shared by the openai teacher and the LLM judge. The key is read from the environment variable whose
*name* is configured, so it never enters params, logs or metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from genz_speak.errors import InputError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MalformedReply(ValueError):
    """The server answered 2xx but the body is unusable (not JSON, no choices, empty content)."""


RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
    openai.APIResponseValidationError,
    MalformedReply,
)


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


def call_with_retries(fn: Callable[[], R], max_retries: int, initial_wait: float = 0.5) -> CallResult:
    """Run `fn`, retrying retryable failures; never raises for them: the last error is returned instead."""
    attempts = 0
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
                value = fn()
        return CallResult(value, None, attempts - 1)
    except RETRYABLE as err:
        return CallResult(None, f"{type(err).__name__}: {err}"[:300], attempts - 1)
    except openai.APIStatusError as err:  # 4xx other than 429: retrying will not help
        return CallResult(None, f"{type(err).__name__} {err.status_code}: {err.message}"[:300], attempts - 1)


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


def chat_text(resp: Any) -> str:
    """The first choice's text, or MalformedReply (retried) when the server sent nothing usable."""
    choices = getattr(resp, "choices", None)
    if not choices or choices[0].message is None or not (choices[0].message.content or "").strip():
        raise MalformedReply("reply has no message content")
    return choices[0].message.content
