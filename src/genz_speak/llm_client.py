"""Calls to any OpenAI-compatible server through the `openai` client, with bounded concurrency and retries.

Shared by the openai teacher and the LLM judge. The key is read from the environment variable whose
*name* is configured, so it never enters params, logs or metrics, and every error text that is stored or
logged is scrubbed of it (`describe`). Text from a server is cleaned before anything hashes or writes it.
`genz_speak.endpoints` spreads requests over several servers of one model.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from openai.types.chat import ChatCompletion
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from genz_speak.errors import InputError
from genz_speak.io import clean_text

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


# Keys in use (the values of the variables the params name), scrubbed from every error text that is
# stored or logged: servers echo them in 401 bodies ("Incorrect API key provided: sk-...").
_SECRETS: set[str] = set()
_SECRET_PATTERNS = (
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}"), "***"),  # OpenAI-style keys
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "***"),  # Hugging Face tokens
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{4,}"), r"\1***"),
    (
        re.compile(
            r"(?i)\b(api[_-]?key|access[_-]?token|token|secret|password)(\W{0,3}[:=]\W{0,2})[^\s\"'&,;}]{4,}"
        ),
        r"\1\2***",
    ),
)


def register_secret(value: str) -> None:
    """A key read from the environment: from now on it is scrubbed from error texts."""
    if len(value) >= 4:  # shorter would scrub ordinary words
        _SECRETS.add(value)


def scrub(text: str) -> str:
    """`text` (an error text to store or log) with the keys in use and anything shaped like a key replaced
    by ***, and lone surrogates and control characters cleaned."""
    text = clean_text(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def server_message(err: openai.APIStatusError) -> str:
    """What the server said about a refused request: its error body's message (OpenAI's {"error":
    {"message"}}, vLLM's {"message"}, FastAPI's {"detail"}) or the body's text; the client's own message
    keeps only "Error code: 400" when the body is not shaped like OpenAI's."""
    body = err.body
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("detail")
            if value:
                return value if isinstance(value, str) else json.dumps(value)
        return json.dumps(body)
    if body:
        return str(body)
    try:
        return err.response.text.strip() or err.message
    except Exception:  # a streamed body already closed: nothing more to read
        return err.message


def describe(err: BaseException) -> str:
    """One line naming a failed request's error, as stored (caches, rejects, scores) and logged: the
    server's own message for an HTTP error, the cause of a connection error; secrets scrubbed."""
    if isinstance(err, openai.APIStatusError):
        text = f"{type(err).__name__} {err.status_code}: {server_message(err)}"
    else:
        text = f"{type(err).__name__}: {err}"
        if isinstance(err, openai.APIConnectionError) and err.__cause__ is not None:
            # "Connection error." alone does not tell a reset from a body cut short.
            text += f" ({type(err.__cause__).__name__}: {err.__cause__})"
    return scrub(" ".join(text.split()))[:300]


def read_key(api_key_env: str) -> str | None:
    key = os.environ.get(api_key_env) or None
    if key:
        register_secret(key)
    return key


def make_client(base_url: str | None, api_key_env: str, timeout: float) -> openai.OpenAI:
    key = read_key(api_key_env)
    if not key:
        if base_url is None:
            raise InputError(
                f"the OpenAI API needs a key: export {api_key_env}=... "
                "(the params name the variable, never the key)"
            )
        key = "unused"  # local OpenAI-compatible servers usually accept any key
    # Retries are ours (tenacity), so the client's own are off and every retry is counted once.
    return openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)


class Interrupted(Exception):
    """The run is stopping (SIGTERM, Ctrl-C, an early stop): no new request starts."""


MAX_RETRY_AFTER = 60.0


def retry_after(exc: BaseException | None, now: float | None = None) -> float | None:
    """The server's Retry-After (seconds, or an HTTP date; or retry-after-ms), clamped to [0, 60]; None
    when there is none or it makes no sense (negative, nan, inf, garbage): the backoff applies then."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    seconds: float | None = None
    try:
        if headers.get("retry-after-ms") is not None:
            seconds = float(headers["retry-after-ms"]) / 1000
        elif headers.get("retry-after") is not None:
            seconds = float(headers["retry-after"])
    except ValueError:
        seconds = _http_date_delay(headers.get("retry-after"), now)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def _http_date_delay(value: str | None, now: float | None) -> float | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT; a naive one is read as such
        when = when.replace(tzinfo=datetime.UTC)
    # A date already past means "now".
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _WaitRetryAfter:
    """Exponential backoff with jitter, replaced by the server's Retry-After when it sends one."""

    def __init__(self, initial: float, maximum: float):
        self.backoff = wait_exponential_jitter(initial=initial, max=maximum)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = retry_after(exc)
        return after if after is not None else self.backoff(state)


@dataclass(frozen=True)
class CallResult:
    value: Any
    error: str | None
    retries: int
    faults: dict[str, int]  # failed tries by `fault_label`: the retries, and the last try when it failed


def call_with_retries(
    fn: Callable[[], R],
    max_retries: int,
    initial_wait: float = 0.5,
    stop: threading.Event | None = None,
) -> CallResult:
    """Run `fn`, retrying retryable failures; never raises for them: the last error is returned instead.
    Once `stop` is set no retry starts, and a backoff in progress ends at once."""
    attempts = 0
    faults: Counter[str] = Counter()
    retrying = Retrying(
        stop=stop_after_attempt(max_retries + 1),
        wait=_WaitRetryAfter(initial_wait, 20.0),
        retry=retry_if_exception(lambda e: isinstance(e, RETRYABLE) and not (stop and stop.is_set())),
        sleep=stop.wait if stop is not None else time.sleep,
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                attempts += 1
                try:
                    value = fn()
                except Interrupted:
                    raise
                except Exception as err:
                    faults[fault_label(err)] += 1
                    raise
        return CallResult(value, None, attempts - 1, dict(faults))
    except Interrupted:
        return CallResult(
            None, "Interrupted: the run stopped before this request", attempts - 1, dict(faults)
        )
    except (*RETRYABLE, openai.APIStatusError) as err:  # 4xx other than 429: retrying will not help
        return CallResult(None, describe(err), attempts - 1, dict(faults))


def map_concurrent(
    fn: Callable[[T], R], items: Iterable[T], concurrency: int, stop: threading.Event | None = None
) -> Iterator[tuple[T, R]]:
    """Apply `fn` with at most `concurrency` calls in flight; yield (item, result) as each finishes. On an
    early exit (SIGTERM, Ctrl-C, an error) `stop` is set, so calls in flight start no retry, and the
    queued ones are dropped; those in flight are waited for (their `fn` records what they got)."""
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        futures = {pool.submit(fn, item): item for item in items}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    finally:
        if stop is not None:
            stop.set()
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
    """The first choice's text, cleaned (lone surrogates, control characters) before anything hashes or
    writes it; NoContent (retried) when the completion has none."""
    choices = resp.choices
    if not choices or choices[0].message is None or not (choices[0].message.content or "").strip():
        raise NoContent("reply has no choices" if not choices else "reply has no message content")
    return clean_text(choices[0].message.content)


def finish_reason(resp: ChatCompletion) -> str | None:
    """Why the first choice ended ("stop", or "length" when max_tokens cut it off)."""
    return resp.choices[0].finish_reason if resp.choices else None


# Reasoning models (Qwen3, DeepSeek-R1 behind `vllm serve` or Ollama) put their thinking in the reply.
_THINK_TAG = r"think|thinking|reasoning"
_THINK_BLOCK = re.compile(rf"<(?P<tag>{_THINK_TAG})>.*?</(?P=tag)>", re.S | re.I)
_THINK_OPEN = re.compile(rf"<(?:{_THINK_TAG})>", re.I)
_THINK_CLOSE = re.compile(rf"</(?:{_THINK_TAG})>", re.I)


def strip_reasoning(text: str) -> tuple[str, str | None]:
    """`text` without its reasoning blocks (<think>, <thinking>, <reasoning>), and why it is unusable
    when it is: a block opened and never closed means the reply was cut off inside the reasoning. A close
    tag with no open one (chat templates that open the block in the prompt) drops everything before it."""
    out = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(out))
    if closes:
        out = out[closes[-1].end() :]
    if _THINK_OPEN.search(out):
        return out, "unterminated reasoning block (<think> without </think>: cut off while reasoning)"
    return out.strip(), None
