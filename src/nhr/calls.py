"""Calling a backend in batches, with retries, without letting one bad item stop a run.

Every stage calls its model through `call_model`. It splits requests into batches, retries
retryable errors with exponential backoff and jitter, honours a server's Retry-After, re-asks
when an answer cannot be parsed, and returns one entry per request: the (parsed) output or a
`Failure` with its reason. The stage turns failures into rows with status `failed`.

Two budgets, never stacked:

- Retries of a failed call. Exactly one layer retries an error. API backends (openai, gemini)
  retry their transport errors (429, 5xx, timeouts, connection errors, broken or empty
  answers) themselves, at most `models.<role>.limits.max_retries` times, so one call costs at
  most `max_retries + 1` HTTP requests; those errors come back marked exhausted and are not
  retried here. Here, `retry.max_attempts` bounds the tries of every other retryable error:
  those of backends that do not retry themselves (sim, diffusers, transformers) and raised
  exceptions.
- Re-asks of an answer that cannot be parsed: at most `retry.unparseable_attempts` answers per
  item, each re-ask a new call with its own retry budget.

A model problem never raises, with one exception: when the first `retry.stop_after_failures`
items a stage sends to one model all fail for the same reason, the backend is broken (server
down, wrong key, a timeout too short) and `BrokenBackendError` stops the run, instead of
marking every item of the run failed. The count is one per stage however many processes run
it: an executor with several workers keeps one `FailureTally` for all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nhr.backends.api import backoff_delay, is_exhausted
from nhr.backends.base import BackendError, BackendSetupError, MissingExtraError
from nhr.config import RetrySection
from nhr.parsing import ParseError
from nhr.stats import StageStats
from nhr.store import restore_error

log = logging.getLogger(__name__)

Request = TypeVar("Request")


@dataclass(frozen=True)
class Failure:
    """An item that gave no usable result after all retries."""

    reason: str
    detail: str = ""


# What to check when a model keeps failing for a reason ({role} and {model} are filled in).
BROKEN_BACKEND_HINTS = {
    "timeout": "is the server up and answering in time? If its answers are just slow, raise "
    "models.{role}.limits.timeout_s",
    "connection": "is the server running, and is models.{role}.base_url right?",
    "server_error": "the server answers with errors (HTTP 5xx): check its logs and that it "
    "serves {model}",
    "rate_limited": "the server keeps answering 429: lower models.{role}.limits.max_concurrency "
    "or requests_per_minute, or check your plan's limits",
    "quota": "the account's quota is used up",
    "auth": "is the API key (in the variable models.{role}.api_key_env names) valid here?",
    "not_found": "does the server serve {model}? (`nhr doctor CONFIG` lists what it serves)",
    "bad_request": "the server rejects the requests: check the options of models.{role}",
    "malformed_response": "is models.{role}.base_url an OpenAI-compatible endpoint, and does "
    "{model} answer this kind of request?",
    "unparseable": "does {model} follow the prompt's answer format? Try a stronger model",
    "exception": "the backend raised an error; run with -v to see it",
}


class BrokenBackendError(RuntimeError):
    """The first items a stage sent to a model all failed for the same reason. Shards that
    were finished keep their markers; the shard in progress is not marked, so running the
    same command again resumes once the backend is fixed."""

    def __init__(self, stage: str, role: str, model: str, reason: str, count: int, detail: str):
        hint = BROKEN_BACKEND_HINTS.get(reason, "check models.{role} and its server")
        sample = f' (e.g. "{detail[:160]}")' if detail else ""
        super().__init__(
            f"stage '{stage}' stopped: the first {count} items sent to the {role} model "
            f"({model}) all failed with {reason}{sample}. Check: "
            + hint.format(role=role, model=model)
            + ". Finished work is kept; run the same command again to resume."
        )
        self.stage, self.role, self.model, self.reason = stage, role, model, reason

    def __reduce__(self):
        # its own message and fields, so it crosses process boundaries (a Ray worker raises
        # it, the driver stops the run with the same message)
        return (restore_error, (type(self), str(self), self.__dict__))


@dataclass
class _Streak:
    reason: str
    count: int
    detail: str


class FailureTally:
    """The streaks of one stage: per model role, the reason and count of its failed items so
    far, None once a success or another reason disarmed it. Plain state that pickles, so an
    executor running a stage in many processes can keep one tally for all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._streaks: dict[str, _Streak | None] = {}  # None: disarmed
        self._broken: _Streak | None = None

    def add(self, role: str, outcomes: Sequence[tuple[str, str] | None]) -> _Streak | None:
        """Count items in order: `(reason, detail)` for a failed one, None for a success.
        Returns the streak that reached `limit` (the backend is broken; it stays so for every
        later call), else None."""
        if self._broken is not None:
            return self._broken
        for outcome in outcomes:
            streak = self._streaks.get(role, _Streak("", 0, ""))
            if streak is None:
                return None
            if outcome is None or (streak.count > 0 and outcome[0] != streak.reason):
                self._streaks[role] = None
                return None
            streak = _Streak(outcome[0], streak.count + 1, streak.detail or outcome[1])
            self._streaks[role] = streak
            if streak.count >= self.limit:
                self._broken = streak
                return streak
        return None

    def disarmed(self, role: str) -> bool:
        """True once the role had a success or two reasons: it can no longer stop the stage."""
        return role in self._streaks and self._streaks[role] is None

    def undecided(self) -> bool:
        """True while some role has had only failures so far, too few yet to judge."""
        return any(streak is not None and streak.count for streak in self._streaks.values())


class FailureWatch:
    """Stops a stage whose first `limit` items sent to one model role all failed for the same
    reason (after every retry). One watch lives for a whole stage run, across its shards; a
    success or another reason disarms it for that role. `limit` 0 never stops.

    The count is kept by a `FailureTally` (`tally`); an executor that runs the stage in several
    processes overrides `_add` and `undecided` to share one tally among them."""

    def __init__(self, stage: str, limit: int) -> None:
        self.stage = stage
        self.limit = limit
        self.tally = FailureTally(limit)

    def record(self, role: str, backend: Any, outcomes: Iterable[Any]) -> None:
        if self.limit <= 0:
            return
        summaries = [
            (outcome.reason, outcome.detail) if isinstance(outcome, Failure) else None
            for outcome in outcomes
        ]
        if not summaries:
            return
        broken = self._add(role, summaries)
        if broken is not None:
            raise BrokenBackendError(
                self.stage,
                role,
                _model_label(backend),
                broken.reason,
                broken.count,
                broken.detail,
            )

    def _add(self, role: str, outcomes: list[tuple[str, str] | None]) -> _Streak | None:
        return self.tally.add(role, outcomes)

    def undecided(self) -> bool:
        """True while some role has had only failures so far, too few yet to judge. Work
        finished meanwhile is not worth keeping if the backend turns out broken."""
        return self.tally.undecided()


class WatchedBackend:
    """A backend as a stage sees it (`StageContext.backend`): the same methods, and
    `call_model` reports each item's final outcome to the stage's `FailureWatch`."""

    def __init__(self, backend: Any, role: str, watch: FailureWatch) -> None:
        self.backend = backend
        self.role = role
        self.watch = watch

    def chat(self, requests: Sequence[Any]) -> list[Any]:
        return self.backend.chat(requests)

    def ask(self, requests: Sequence[Any]) -> list[Any]:
        return self.backend.ask(requests)

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        return self.backend.generate(requests)

    def edit(self, requests: Sequence[Any]) -> list[Any]:
        return self.backend.edit(requests)

    def info(self) -> Any:
        return self.backend.info()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def report(self, outcomes: list[Any]) -> None:
        self.watch.record(self.role, self.backend, outcomes)


def _model_label(backend: Any) -> str:
    try:
        info = backend.info()
        return f"{info.model}, backend {info.backend}"
    except Exception:  # only for a message
        return type(backend).__name__


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
    sampled with a new seed), since re-sending a greedy request usually repeats the answer.

    When `method` belongs to a `WatchedBackend`, each item's final outcome is reported to its
    watch, which raises `BrokenBackendError` for a broken backend."""
    watched = getattr(method, "__self__", None)
    if not isinstance(watched, WatchedBackend):
        watched = None
    results: list[Any] = [None] * len(requests)
    reasked: dict[int, Any] = {}
    errors_seen = [0] * len(requests)
    parse_failures = [0] * len(requests)
    pending = list(range(len(requests)))
    round_number = 0
    wait_hint = 0.0
    while pending:
        if round_number:
            sleep(backoff_delay(round_number, retry.backoff_s, retry.max_backoff_s, wait_hint))
        wait_hint = 0.0
        retry_next: list[int] = []
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            outputs = _call_batch(method, [reasked.get(i) or requests[i] for i in chunk], stats)
            finished: list[Any] = []
            for index, output in zip(chunk, outputs):
                if isinstance(output, BackendError):
                    errors_seen[index] += 1
                    if _retried_here(output) and errors_seen[index] < retry.max_attempts:
                        retry_next.append(index)
                        stats.retries_by_cause[output.reason] += 1
                        wait_hint = max(wait_hint, getattr(output, "retry_after", None) or 0.0)
                    else:
                        results[index] = Failure(output.reason, output.detail[:300])
                        finished.append(results[index])
                    continue
                if parse is None:
                    results[index] = output
                    finished.append(output)
                    continue
                try:
                    results[index] = parse(output)
                    finished.append(results[index])
                except ParseError as error:
                    parse_failures[index] += 1
                    if parse_failures[index] < retry.unparseable_attempts:
                        retry_next.append(index)
                        stats.retries_by_cause["unparseable"] += 1
                        if reask is not None:
                            reasked[index] = reask(requests[index], parse_failures[index])
                    else:
                        results[index] = Failure(error.reason, str(error)[:300])
                        finished.append(results[index])
            if on_done is not None:
                on_done(sum(1 for i in chunk if results[i] is not None))
            if watched is not None:
                watched.report(finished)
        stats.retries += len(retry_next)
        pending = sorted(retry_next)
        round_number += 1
    return results


def _retried_here(error: BackendError) -> bool:
    """Retryable, and not already retried by its backend (the budget is spent there)."""
    return error.retryable and not is_exhausted(error)


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


def sampled(requests: Sequence[Any], samples: int, temperature: float) -> Sequence[Any]:
    """K = `samples` requests per request, item by item: with K = 1 the requests themselves
    (greedy), else each sampled at `temperature` with seed = its sample index 0..K-1, so the K
    requests (and their cache keys) differ and a rerun asks the same K again."""
    if samples == 1:
        return requests

    def build(index: int) -> Any:
        item, sample = divmod(index, samples)
        return dataclasses.replace(requests[item], temperature=temperature, seed=sample)

    return LazyRequests(len(requests) * samples, build)


def grouped_samples(results: list[Any], samples: int) -> list[Any]:
    """Per item, the list of its K results, or the Failure of its first failed sample (an item
    is judged on all K answers or not at all)."""
    grouped = []
    for start in range(0, len(results), samples):
        looks = results[start : start + samples]
        failure = next((look for look in looks if isinstance(look, Failure)), None)
        grouped.append(failure if failure is not None else list(looks))
    return grouped
