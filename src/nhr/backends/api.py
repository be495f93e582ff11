"""Shared machinery of the API backends (OpenAI-compatible servers and Gemini).

A stage hands a backend one batch of requests and wants one answer or one `BackendError` per
request back. Over HTTP that means: send the batch concurrently, but never more than
`limits.max_concurrency` requests at once; stay under the requests-per-minute and
tokens-per-minute budgets; give up on a request after `limits.timeout_s`; retry 429, 5xx,
timeouts, connection errors and broken bodies with exponential backoff and jitter, waiting at
least as long as the server's Retry-After; and count what was spent. `ApiRunner` does all of
that once, for both backends. A backend only says how to send one request (`send`), how to
read the SDK's exceptions (`classify`) and how to build and close its SDK client.

The retry budget: one call of one request costs at most `limits.max_retries + 1` HTTP
requests. The transport errors retried here come back marked `exhausted`, and `call_model`
never retries those again (before, both layers retried and a request against a server that
always answered 503 cost 7 x 4 = 28 requests). The retry loop is tenacity's; the backoff
(`backoff_delay`) is shared with `call_model`, which retries for backends that do not retry
themselves (the simulator, diffusers, transformers).

The batch runs on an event loop in a background thread owned by the runner, so every batch
of a backend, from whatever thread it comes, shares one connection pool and one `Limiter`
(the concurrency limit, the two rate limiters and the Retry-After pause). The SDK client is
created on that loop and closed on it before the loop stops (`close`, or when the backend is
garbage collected). An executor that serves one model from several processes installs a
shared limiter with `share_limits`, so the limits hold across all of them (a server's limit
is global); backend code does not know which limiter it has.

The API key is read from the environment by name and kept in a `Secret`, whose repr hides it;
every error detail and log line produced here is scrubbed of it as a last line of defence.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import importlib
import io
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Generic, Protocol, TypeVar

import tenacity

from nhr.backends.base import (
    BackendError,
    BackendSetupError,
    MissingExtraError,
    PermanentBackendError,
    TransientBackendError,
)
from nhr.backends.configs import ApiLimits, Prices
from nhr.stats import RETRY_CAUSE_PREFIX

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Value = TypeVar("Value")

# Reasons retried here, at the transport level, before the item is handed back as failed
# (and marked exhausted): 429, 5xx (and 409), timeouts, connection errors, and answers with
# a broken or empty body. Anything else (refusals, bad requests, unexpected exceptions) is
# returned at once.
TRANSPORT_REASONS = frozenset(
    {"rate_limited", "server_error", "timeout", "connection", "malformed_response"}
)

# A rough prompt-token cost of one image, for the tokens-per-minute estimate only; the
# estimate is corrected by the usage the server reports.
IMAGE_TOKENS_ESTIMATE = 800

USAGE_KEYS = ("requests", "transport_retries", "input_tokens", "output_tokens", "images")


# --- setup: SDKs and secrets ----------------------------------------------------------------


class MissingApiKeyError(BackendSetupError):
    """The environment variable that should hold the API key (or the Vertex project) is not
    set. `variable` names it, so the CLI can tell the user exactly what to export."""

    def __init__(self, variable: str, backend: str, hint: str = "") -> None:
        message = f"the {backend} backend needs {variable}: set the environment variable {variable}"
        super().__init__(message + (f" ({hint})" if hint else ""))
        self.variable = variable


class Secret:
    """A string that does not show itself: repr and str print a placeholder, so a key held in
    a config object, a partial or a traceback's locals never reaches a log or a file."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is never pickled; read it from the environment again")


def read_secret(variable: str) -> Secret | None:
    """The value of environment variable `variable`, or None when unset or blank."""
    value = os.environ.get(variable, "").strip()
    return Secret(value) if value else None


def require_sdk(module: str, extra: str) -> ModuleType:
    """Import an SDK module, or say which extra to install; imported only by the backend that
    needs it, so `import nhr` stays light."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"the {extra} backend needs the {module} package: pip install 'nhr[{extra}]'"
        ) from error


def redact(text: str, secret: Secret | None) -> str:
    """`text` with the secret replaced, for anything that may end up in a log or a file."""
    if secret is None or not secret.reveal():
        return text
    return text.replace(secret.reveal(), "***")


# --- what one attempt gives back ------------------------------------------------------------


@dataclass
class Answer(Generic[Value]):
    """One server answer: the value (or an item error read from a valid answer, such as a
    refusal) and what the server says it cost."""

    value: Value | BackendError
    input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0


def mark_exhausted(error: BackendError) -> BackendError:
    """Say that the retry budget of this error was spent where it was raised, so no caller
    retries it again (see `is_exhausted`)."""
    error.exhausted = True  # type: ignore[attr-defined]
    return error


def is_exhausted(error: BackendError) -> bool:
    """True for an error its backend already retried as often as its config allows."""
    return bool(getattr(error, "exhausted", False))


def backoff_delay(
    retry: int, backoff_s: float, max_backoff_s: float, server_hint: float | None = None
) -> float:
    """Seconds to wait before retry number `retry` (1 = the first retry): exponential from
    `backoff_s`, capped at `max_backoff_s`, with jitter (0.5x to 1.5x, so many clients do not
    retry in lockstep), and never shorter than the server's Retry-After (plus up to 10 %, so
    the clients it paused do not all come back at the same instant).

    Both retry layers use this one function: the API runner (through tenacity) and
    `call_model` (whose retries go in rounds over a batch, which tenacity does not model).
    """
    delay = min(max_backoff_s, backoff_s * 2 ** (retry - 1))
    delay *= 0.5 + random.random()
    if server_hint:
        delay = max(delay, server_hint * (1.0 + 0.1 * random.random()))
    return delay


def transient(reason: str, detail: str = "", retry_after: float | None = None) -> BackendError:
    """A `TransientBackendError`, with the server's wait hint as `retry_after` (seconds)."""
    error = TransientBackendError(reason, detail)
    error.retry_after = retry_after  # type: ignore[attr-defined]
    return error


def status_error(status: int, detail: str, retry_after: float | None = None) -> BackendError:
    """The item error for an HTTP error status, the same for every API backend."""
    if status == 429:
        return transient("rate_limited", detail, retry_after)
    if status >= 500 or status == 409:  # 409: a lock or conflict on the server's side
        return transient("server_error", detail, retry_after)
    if status == 408:
        return transient("timeout", detail, retry_after)
    if status in (401, 403):
        return PermanentBackendError("auth", detail)
    if status == 404:
        return PermanentBackendError("not_found", detail)
    if status == 413:
        return PermanentBackendError("too_large", detail)
    return PermanentBackendError("bad_request", detail)


def transport_reason(error: BaseException) -> str | None:
    """`timeout` or `connection` for the HTTP library's transport errors (httpx or its fork
    httpx2, whichever the SDK uses) and the socket errors below them; None otherwise."""
    if isinstance(error, TimeoutError):
        return "timeout"
    for name in ("httpx2", "httpx"):
        module = sys.modules.get(name)  # whichever the SDK imported; never import one here
        if module is None:
            continue
        if isinstance(error, module.TimeoutException):
            return "timeout"
        if isinstance(error, module.TransportError):
            return "connection"
    if isinstance(error, OSError):
        return "connection"
    return None


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or an HTTP date) or OpenAI's
    `retry-after-ms`; None when the server gave no usable hint."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- images ---------------------------------------------------------------------------------


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes (PNG by the protocol, but be honest if not)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the header; raises ValueError if the bytes are no image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except OSError as error:
        raise ValueError(f"unreadable image: {error}") from None


def png_of_size(data: bytes, width: int, height: int) -> bytes:
    """PNG bytes of exactly `width` x `height`.

    An answer that already is such a PNG is returned unchanged, byte for byte (its metadata,
    such as the simulator's ground truth, survive). Anything else is decoded, resized if needed
    and re-encoded, because the pipeline relies on the size it asked for. Raises ValueError
    for bytes that are not an image.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "PNG" and image.size == (width, height):
                return data
            image.load()
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()
    except OSError as error:
        raise ValueError(f"unreadable image: {error}") from None


# --- usage ----------------------------------------------------------------------------------


class UsageMeter:
    """Cumulative, thread-safe counters of what a backend spent.

    `requests` counts HTTP requests sent (retries included, as the server counts them),
    `transport_retries` the retries among them and `retries.<reason>` those retries by
    cause (timeout, rate_limited, server_error, malformed_response, connection); tokens and
    images are what the server reported. `cost_usd` is derived from `prices` when a config
    sets them.
    """

    def __init__(self, prices: Prices | None) -> None:
        self._prices = prices
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(USAGE_KEYS, 0)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                self._counts[key] = self._counts.get(key, 0) + value

    def add_retry(self, reason: str) -> None:
        self.add(transport_retries=1, **{RETRY_CAUSE_PREFIX + reason: 1})

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            usage: dict[str, float] = {key: float(value) for key, value in self._counts.items()}
        if self._prices is not None:
            p = self._prices
            usage["cost_usd"] = (
                usage["input_tokens"] * p.input_per_million_tokens / 1e6
                + usage["output_tokens"] * p.output_per_million_tokens / 1e6
                + usage["images"] * p.per_image
            )
        return usage


# --- rate limits ----------------------------------------------------------------------------


class TokenBucket:
    """An async token bucket refilled at `per_minute / 60` per second.

    Capacity is one second of budget: servers quantise per-minute limits into short windows,
    so a full minute's burst would be refused anyway. A take larger than what is left drives
    the level below zero (a debt the next takes wait for), so a request bigger than one
    second of budget never deadlocks and the average rate still holds. Waiters are served in
    order (asyncio.Lock is fair). Used only on the runner's loop thread.

    Hand-written on purpose: aiolimiter's leaky bucket refuses a take larger than its
    capacity (no debt) and cannot be credited back when the server reports fewer tokens than
    estimated, and both are needed for tokens-per-minute.
    """

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._lock: asyncio.Lock | None = None

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, amount: float) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                self._refill()
                if self.level >= need:
                    self.level -= amount
                    return
                # Wake at least every 0.1 s: a usage correction may have refilled the bucket.
                await asyncio.sleep(min(0.1, (need - self.level) / self.rate))

    def give_back(self, amount: float) -> None:
        """Correct an estimate: positive gives tokens back, negative charges more."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


# --- who enforces the limits ----------------------------------------------------------------


class Limiter(Protocol):
    """The limits of one server as a runner sees them: a concurrency slot per request, the
    requests- and tokens-per-minute budgets, and the pause a 429 with Retry-After asks for.

    `LocalLimiter`, the default, enforces them in this process. An executor that runs one model
    in several processes (the Ray executor's replicas) installs, with `share_limits`, a limiter
    that asks one shared place, so the limit holds for all of them together. Built on the
    runner's event loop and used only there.
    """

    async def acquire(self, tokens: int) -> Any:
        """Wait for a slot, the server's pause and the budgets; returns a ticket for `release`."""

    def release(self, ticket: Any, unused_tokens: float) -> None:
        """Give the slot back; `unused_tokens` corrects the estimate taken (negative: more)."""

    def pause(self, seconds: float) -> None:
        """Nobody sends for `seconds` (a 429 with Retry-After)."""


class LocalLimiter:
    """The limits enforced in this process: a semaphore, two token buckets and a pause."""

    def __init__(self, limits: ApiLimits) -> None:
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        self._requests = (
            TokenBucket(limits.requests_per_minute) if limits.requests_per_minute else None
        )
        self._tokens = TokenBucket(limits.tokens_per_minute) if limits.tokens_per_minute else None
        self._resume_at = 0.0  # after a 429 with Retry-After, nobody sends before this

    async def acquire(self, tokens: int) -> None:
        await self._slots.acquire()
        try:
            await self.wait_for_budgets(tokens)
        except BaseException:
            self._slots.release()
            raise

    async def wait_for_budgets(self, tokens: int) -> None:
        """The pause and the per-minute budgets, without a slot."""
        pause = self._resume_at - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        if self._requests is not None:
            await self._requests.take(1)
        if self._tokens is not None:
            await self._tokens.take(tokens)

    def release(self, ticket: Any, unused_tokens: float) -> None:
        self._slots.release()
        self.give_back_tokens(unused_tokens)

    def give_back_tokens(self, unused_tokens: float) -> None:
        if self._tokens is not None and unused_tokens:
            self._tokens.give_back(unused_tokens)

    def pause(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, time.monotonic() + seconds)


# scope, limits -> the limiter of a runner; None: every runner enforces its own limits
LimiterFactory = Callable[[str, ApiLimits], Limiter]
_shared_limits: LimiterFactory | None = None


def share_limits(factory: LimiterFactory | None) -> None:
    """Make the API runners built from now on in this process take their limiter from
    `factory(scope, limits)` (`scope` names the model config, see `limits_scope`); None
    restores the in-process default. Called by an executor in its workers, before they build
    backends; backend code never knows who enforces its limits."""
    global _shared_limits
    _shared_limits = factory


def limits_scope(config: Any) -> str:
    """What one limit belongs to: the model config (one server, one model, one set of
    limits). Replicas of a role, and roles sharing a model config, share one scope, as they
    share one backend in one process."""
    dumped = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(dumped.encode()).hexdigest()[:16]


# --- the runner -----------------------------------------------------------------------------


class _LoopThread:
    """An event loop running in a daemon thread, for as long as its owner lives.

    anyio's blocking portal does the same, but stopping it waits for every task still running
    and joins its thread without a time limit, so one hung request would hang `close` (and the
    garbage collector calling it); this stops the loop and gives up on the thread after 10 s.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coroutine: Awaitable[Any]) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


Send = Callable[[Any, Request], Awaitable[Answer]]


class ApiRunner:
    """Runs batches of one backend's requests under its limits, retries and usage meter.

    `make_client()` builds the SDK client (called on the loop thread, on first use) and
    `close_client(client)` closes it; `classify(exception)` turns an SDK exception into an
    item error. None of them may hold a reference to the backend, so that a backend no one
    uses any more is collected and its loop stopped. `scope` names what the limits belong to
    (`limits_scope` of the model config), for an executor that shares them (`share_limits`).
    """

    def __init__(
        self,
        name: str,
        limits: ApiLimits,
        prices: Prices | None,
        *,
        make_client: Callable[[], Any],
        close_client: Callable[[Any], Awaitable[None]],
        classify: Callable[[BaseException], BackendError],
        secret: Secret | None = None,
        scope: str = "",
    ) -> None:
        self.name = name
        self.limits = limits
        self.scope = scope
        self._make_limiter: LimiterFactory = (
            _shared_limits if scope and _shared_limits is not None else _local_limiter
        )
        self.meter = UsageMeter(prices)
        self._make_client = make_client
        self._close_client = close_client
        self._classify = classify
        self._secret = secret
        self._lock = threading.Lock()
        self._loop: _LoopThread | None = None
        # Built on the loop with the client (asyncio objects belong to one loop).
        self._client: Any = None
        self._limiter: Limiter | None = None
        self._reasons_shown: set[str] = set()  # reasons of failed requests already warned of

    # public ---------------------------------------------------------------------------------

    def run(
        self,
        requests: Sequence[Request],
        send: Send,
        estimate: Callable[[Request], int],
    ) -> list[Any]:
        """One entry per request, in order: the answer's value or a `BackendError`.

        `send(client, request)` makes one attempt; `estimate(request)` gives the tokens it
        may use, for the tokens-per-minute limiter.
        """
        if not requests:
            return []
        loop = self._start()
        return loop.submit(self._run_batch(list(requests), send, estimate)).result()

    def usage(self) -> dict[str, float]:
        return self.meter.snapshot()

    def close(self) -> None:
        """Close the SDK client on its loop, then stop the loop. Safe to call twice."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._client is not None:
            try:
                loop.submit(self._close_client(self._client)).result(timeout=10)
            except Exception as error:  # closing must never fail a run
                log.debug("%s: closing the client failed: %s", self.name, type(error).__name__)
        loop.stop()
        # A later run starts a new loop, with a new client and a new loop-bound limiter.
        self._client = self._limiter = None

    # internals ------------------------------------------------------------------------------

    def _start(self) -> _LoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread(f"nhr-{self.name}")
            return self._loop

    async def _run_batch(
        self, requests: list[Any], send: Send, estimate: Callable[[Any], int]
    ) -> list[Any]:
        if self._client is None:
            self._client = self._create_client()
            self._limiter = self._make_limiter(self.scope, self.limits)
        return await asyncio.gather(*(self._one(request, send, estimate) for request in requests))

    def _create_client(self) -> Any:
        try:
            return self._make_client()
        except (BackendSetupError, MissingExtraError):
            raise
        except Exception as error:  # e.g. no Google credentials: no call can work
            detail = redact(f"{type(error).__name__}: {error}", self._secret)
            raise BackendSetupError(f"{self.name}: cannot create the client: {detail}") from None

    async def _one(self, request: Any, send: Send, estimate: Callable[[Any], int]) -> Any:
        """The value of one request, or its error after at most `max_retries` retries of
        transport errors. A transport error that comes back is marked exhausted: the budget
        is spent, so `call_model` does not retry it again."""
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.limits.max_retries + 1),
            retry=tenacity.retry_if_result(_is_transport_error),
            wait=self._wait,
            before_sleep=self._before_retry,
            retry_error_callback=_last_result,
            sleep=asyncio.sleep,
        )
        result = await retrying(self._attempt, request, send, estimate(request))
        if _is_transport_error(result):
            # The first of each reason is shown without -v: the user should know early.
            level = logging.INFO if result.reason in self._reasons_shown else logging.WARNING
            self._reasons_shown.add(result.reason)
            log.log(
                level,
                "%s: a request failed after %d retries: %s",
                self.name,
                self.limits.max_retries,
                result,
            )
            mark_exhausted(result)
        return result

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.result() if state.outcome else None
        limits = self.limits
        hint = getattr(error, "retry_after", None)
        return backoff_delay(state.attempt_number, limits.backoff_s, limits.max_backoff_s, hint)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.result() if state.outcome else None
        reason = getattr(error, "reason", "unknown")
        delay = state.next_action.sleep if state.next_action else 0.0
        log.debug(
            "%s: retry %d/%d in %.2f s after %s",
            self.name,
            state.attempt_number,
            self.limits.max_retries,
            delay,
            reason,
        )
        self.meter.add_retry(reason)

    async def _attempt(self, request: Any, send: Send, estimate: int) -> Any:
        """One HTTP request inside a concurrency slot and the rate limits: its value, or the
        item error it ended with."""
        limiter = self._limiter
        assert limiter is not None
        ticket = await limiter.acquire(estimate)
        answer: Answer | None = None
        try:
            self.meter.add(requests=1)
            try:
                async with asyncio.timeout(self.limits.timeout_s):
                    answer = await send(self._client, request)
            except Exception as exception:  # cancellation is a BaseException: not caught
                return self._note_pause(self._error_of(exception))
        finally:
            limiter.release(ticket, _unused_tokens(answer, estimate))
        self.meter.add(
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            images=answer.images,
        )
        if isinstance(answer.value, BackendError):
            return self._note_pause(self._scrub(answer.value))
        return answer.value

    def _note_pause(self, error: BackendError) -> BackendError:
        """After a 429 with Retry-After, nobody sends before the server said to."""
        hint = getattr(error, "retry_after", None)
        if error.reason == "rate_limited" and hint and self._limiter is not None:
            self._limiter.pause(hint)
        return error

    def _error_of(self, exception: Exception) -> BackendError:
        if isinstance(exception, BackendError):
            return self._scrub(exception)
        if isinstance(exception, TimeoutError):
            return transient("timeout", f"no answer within {self.limits.timeout_s:g} s")
        try:
            error = self._classify(exception)
        except Exception as failure:  # a classifier bug must not end the batch
            error = transient("exception", f"{type(failure).__name__} while classifying")
        if error.reason == "exception":
            log.warning("%s: request raised %s", self.name, redact(str(error), self._secret))
        return self._scrub(error)

    def _scrub(self, error: BackendError) -> BackendError:
        """The same error without the key in its detail, cut to a readable length."""
        detail = redact(error.detail, self._secret)[:500]
        if detail == error.detail:
            return error
        clean = type(error)(error.reason, detail)
        if hasattr(error, "retry_after"):
            clean.retry_after = error.retry_after  # type: ignore[attr-defined]
        return clean


def _local_limiter(scope: str, limits: ApiLimits) -> Limiter:
    return LocalLimiter(limits)


def _unused_tokens(answer: Answer | None, estimate: int) -> float:
    """The tokens-per-minute correction of one request: the estimate minus what the server
    reported it used (nothing when it reported nothing, or gave no answer)."""
    if answer is None:
        return 0.0
    actual = answer.input_tokens + answer.output_tokens
    return float(estimate - actual) if actual > 0 else 0.0


def _is_transport_error(result: Any) -> bool:
    return (
        isinstance(result, BackendError) and result.retryable and result.reason in TRANSPORT_REASONS
    )


def _last_result(state: tenacity.RetryCallState) -> Any:
    """When the retries are spent, the last error is the answer (tenacity would raise)."""
    assert state.outcome is not None
    return state.outcome.result()


def estimate_tokens(text: str, images: int, max_tokens: int) -> int:
    """Tokens a request may use: about four characters a token, a flat cost per image and
    the whole answer budget. Only for the tokens-per-minute limiter."""
    return len(text) // 4 + images * IMAGE_TOKENS_ESTIMATE + max_tokens


def unexpected(error: BaseException) -> BackendError:
    """An exception nobody expected: retryable at the stage level (as `calls.py` treats a
    raised exception), not at the transport level."""
    return transient("exception", f"{type(error).__name__}: {error}")
