"""Calling a backend in batches, with retries, without letting one bad item stop a run.

Every stage calls its model through `call_model`. It splits requests into batches, retries
retryable errors (timeouts, rate limits, 5xx) with exponential backoff and jitter, honours a
server's Retry-After, re-asks when an answer cannot be parsed, and returns one entry per
request: the (parsed) output or a `Failure` with its reason. It never raises for a model
problem; the stage turns failures into rows with status `failed`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nhr.backends.base import BackendError, BackendSetupError, MissingExtraError
from nhr.config import RetrySection
from nhr.parsing import ParseError
from nhr.stats import StageStats

log = logging.getLogger(__name__)

Request = TypeVar("Request")


@dataclass(frozen=True)
class Failure:
    """An item that gave no usable result after all retries."""

    reason: str
    detail: str = ""


def call_model(
    method: Callable[[Sequence[Request]], Sequence[Any]],
    requests: Sequence[Request],
    *,
    batch_size: int,
    retry: RetrySection,
    stats: StageStats,
    parse: Callable[[Any], Any] | None = None,
    reask: Callable[[Any, int], Any] | None = None,
    on_done: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Any]:
    """`reask(request, n)` gives the request to send after the n-th unparseable answer (say,
    sampled with a new seed), since re-sending a greedy request usually repeats the answer."""
    results: list[Any] = [None] * len(requests)
    reasked: dict[int, Any] = {}
    errors_seen = [0] * len(requests)
    parse_failures = [0] * len(requests)
    pending = list(range(len(requests)))
    round_number = 0
    wait_hint = 0.0
    while pending:
        if round_number:
            sleep(_backoff(retry, round_number, wait_hint))
        wait_hint = 0.0
        retry_next: list[int] = []
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            outputs = _call_batch(method, [reasked.get(i) or requests[i] for i in chunk], stats)
            for index, output in zip(chunk, outputs):
                if isinstance(output, BackendError):
                    errors_seen[index] += 1
                    if output.retryable and errors_seen[index] < retry.max_attempts:
                        retry_next.append(index)
                        wait_hint = max(wait_hint, getattr(output, "retry_after", None) or 0.0)
                    else:
                        results[index] = Failure(output.reason, output.detail[:300])
                    continue
                if parse is None:
                    results[index] = output
                    continue
                try:
                    results[index] = parse(output)
                except ParseError as error:
                    parse_failures[index] += 1
                    if parse_failures[index] < retry.unparseable_attempts:
                        retry_next.append(index)
                        if reask is not None:
                            reasked[index] = reask(requests[index], parse_failures[index])
                    else:
                        results[index] = Failure(error.reason, str(error)[:300])
            if on_done is not None:
                on_done(sum(1 for i in chunk if results[i] is not None))
        stats.retries += len(retry_next)
        pending = sorted(retry_next)
        round_number += 1
    return results


def _call_batch(method: Callable, batch: list, stats: StageStats) -> list[Any]:
    started = time.perf_counter()
    try:
        outputs = list(method(batch))
        if len(outputs) != len(batch):
            error = BackendError(
                "bad_batch", f"backend returned {len(outputs)} results for {len(batch)} requests"
            )
            outputs = [error] * len(batch)
    except BackendError as error:
        outputs = [error] * len(batch)
    except (BackendSetupError, MissingExtraError):
        raise  # the user must fix the setup; retrying every item would only hide it
    except Exception as error:  # a backend bug or library error must not end the run
        log.warning("backend call raised %s: %s", type(error).__name__, error)
        transient = BackendError("exception", f"{type(error).__name__}: {error}")
        transient.retryable = True
        outputs = [transient] * len(batch)
    stats.model_seconds += time.perf_counter() - started
    stats.model_calls += len(batch)
    stats.model_batches += 1
    return outputs


def _backoff(retry: RetrySection, round_number: int, server_hint: float) -> float:
    delay = min(retry.max_backoff_s, retry.backoff_s * 2 ** (round_number - 1))
    delay *= 0.5 + random.random()  # jitter, so many workers do not retry in lockstep
    return max(delay, server_hint)


class LazyRequests(Sequence):
    """Requests built on demand, one batch at a time, so a shard's images are never all held
    in memory at once (a shard of 1 MP edits would otherwise need gigabytes)."""

    def __init__(self, count: int, build: Callable[[int], Any]) -> None:
        self._count = count
        self._build = build

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._build(i) for i in range(*index.indices(self._count))]
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self._build(index)
