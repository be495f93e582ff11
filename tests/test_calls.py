from nhr.backends.base import PermanentBackendError, TransientBackendError
from nhr.calls import Failure, LazyRequests, call_model
from nhr.config import RetrySection
from nhr.parsing import parse_yes_no
from nhr.stats import StageStats

RETRY = RetrySection(max_attempts=3, backoff_s=0.0, unparseable_attempts=2)


class Flaky:
    """Fails each request a set number of times with a given error, then echoes it."""

    def __init__(self, failures):
        self.failures = dict(failures)
        self.batches = []

    def __call__(self, batch):
        self.batches.append(list(batch))
        out = []
        for item in batch:
            error = self.failures.get(item)
            if error is not None and error[1] > 0:
                self.failures[item] = (error[0], error[1] - 1)
                out.append(error[0])
            else:
                out.append(item)
        return out


def test_retryable_errors_are_retried_and_others_fail_at_once():
    timeout = TransientBackendError("timeout")
    refusal = PermanentBackendError("refusal", "no")
    backend = Flaky({"a": (timeout, 2), "b": (refusal, 5), "c": (timeout, 9)})
    stats = StageStats()
    sleeps = []
    results = call_model(
        backend, ["a", "b", "c", "d"], batch_size=2, retry=RETRY, stats=stats, sleep=sleeps.append
    )
    assert results[0] == "a" and results[3] == "d"
    assert results[1] == Failure("refusal", "no")
    assert results[2] == Failure("timeout", "")
    assert stats.retries == 4 and len(sleeps) == 2
    assert stats.model_calls == 4 + 2 + 2
    assert backend.batches[0] == ["a", "b"]  # batched as asked


def test_a_raising_backend_fails_its_batch_without_stopping_the_run():
    def broken(batch):
        if "boom" in batch:
            raise RuntimeError("CUDA out of memory")
        return list(batch)

    results = call_model(
        broken,
        ["x", "boom", "y"],
        batch_size=1,
        retry=RETRY,
        stats=StageStats(),
        sleep=lambda s: None,
    )
    assert results[0] == "x" and results[2] == "y"
    assert results[1].reason == "exception" and "out of memory" in results[1].detail


def test_wrong_result_count_is_a_failure():
    results = call_model(
        lambda batch: ["only one"],
        ["a", "b"],
        batch_size=2,
        retry=RETRY,
        stats=StageStats(),
        sleep=lambda s: None,
    )
    assert all(r.reason == "bad_batch" for r in results)


def test_unparseable_answers_are_re_asked_then_recorded():
    answers = iter(["maybe", "yes", "hmm", "hmm"])
    results = call_model(
        lambda batch: [next(answers) for _ in batch],
        ["q1", "q2"],
        batch_size=1,
        retry=RETRY,
        stats=StageStats(),
        parse=parse_yes_no,
        sleep=lambda s: None,
    )
    # q1: "maybe" then (retry round) ... the order of answers follows the calls made
    assert sum(isinstance(r, Failure) for r in results) == 1
    assert any(r is True for r in results)
    assert [r.reason for r in results if isinstance(r, Failure)] == ["unparseable"]


def test_retry_after_hint_is_honoured():
    error = TransientBackendError("rate_limited")
    error.retry_after = 7.5
    backend = Flaky({"a": (error, 1)})
    sleeps = []
    call_model(backend, ["a"], batch_size=1, retry=RETRY, stats=StageStats(), sleep=sleeps.append)
    [slept] = sleeps
    assert 7.5 <= slept <= 7.5 * 1.1  # the hint, plus a little jitter so waiters spread out


def test_lazy_requests_build_only_what_is_asked():
    built = []
    lazy = LazyRequests(5, lambda i: built.append(i) or i * 10)
    assert len(lazy) == 5 and lazy[3] == 30 and built == [3]
    assert call_model(lambda b: list(b), lazy, batch_size=2, retry=RETRY, stats=StageStats()) == [
        0,
        10,
        20,
        30,
        40,
    ]


def test_setup_errors_stop_the_run_with_their_message():
    import pytest

    from nhr.backends.base import BackendSetupError

    def unconfigured(batch):
        raise BackendSetupError("set OPENAI_API_KEY")

    with pytest.raises(BackendSetupError, match="OPENAI_API_KEY"):
        call_model(unconfigured, ["a"], batch_size=1, retry=RETRY, stats=StageStats())


# --- one retry budget ---------------------------------------------------------------------------


def test_a_backend_that_does_not_retry_gets_max_attempts_tries_per_item():
    timeout = TransientBackendError("timeout", "slow")
    backend = Flaky({"a": (timeout, 99)})
    stats = StageStats()
    [result] = call_model(backend, ["a"], batch_size=1, retry=RETRY, stats=stats)
    assert result == Failure("timeout", "slow")
    assert len(backend.batches) == RETRY.max_attempts
    assert stats.retries_by_cause == {"timeout": RETRY.max_attempts - 1}


def test_an_error_its_backend_already_retried_is_not_sent_again():
    from nhr.backends.api import mark_exhausted

    spent = mark_exhausted(TransientBackendError("server_error", "HTTP 503"))
    backend = Flaky({"a": (spent, 99)})
    stats = StageStats()
    [result] = call_model(backend, ["a"], batch_size=1, retry=RETRY, stats=stats)
    assert result == Failure("server_error", "HTTP 503")
    assert len(backend.batches) == 1 and stats.retries == 0


def test_re_asks_of_unparseable_answers_are_a_budget_of_their_own():
    calls = []

    def rambling(batch):
        calls.append(len(batch))
        return ["I think so?" for _ in batch]

    stats = StageStats()
    retry = RetrySection(max_attempts=1, backoff_s=0.0, unparseable_attempts=3)
    [result] = call_model(
        rambling, ["q"], batch_size=1, retry=retry, stats=stats, parse=parse_yes_no
    )
    assert result.reason == "unparseable" and len(calls) == 3
    assert stats.retries_by_cause == {"unparseable": 2}


# --- a broken backend stops the stage ------------------------------------------------------------


class Model:
    def __init__(self, answer):
        self.answer = answer
        self.calls = 0

    def info(self):
        from nhr.backends.base import CallInfo

        return CallInfo(backend="sim", model="sim-validator")

    def ask(self, batch):
        self.calls += len(batch)
        return [self.answer(item) for item in batch]


def test_the_first_k_items_failing_for_one_reason_stop_the_stage():
    import pytest

    from nhr.calls import BrokenBackendError, FailureWatch, WatchedBackend

    model = Model(lambda item: PermanentBackendError("auth", "HTTP 401: invalid key"))
    watched = WatchedBackend(model, "validator", FailureWatch("validate", limit=5))
    with pytest.raises(BrokenBackendError) as caught:
        call_model(watched.ask, list(range(20)), batch_size=2, retry=RETRY, stats=StageStats())
    message = str(caught.value)
    for fragment in ("'validate'", "first 5 items", "validator", "sim-validator", "auth"):
        assert fragment in message
    assert "HTTP 401: invalid key" in message and "api_key_env" in message
    assert model.calls == 6  # stopped after the batch holding the fifth failure


def test_the_watch_counts_across_calls_and_a_success_disarms_it():
    import pytest

    from nhr.calls import BrokenBackendError, FailureWatch, WatchedBackend

    failing = Model(lambda item: PermanentBackendError("refusal", "no"))
    watch = FailureWatch("validate", limit=4)
    for _ in range(3):  # as the shards of one stage: one call each
        call_model(
            WatchedBackend(failing, "validator", watch).ask,
            [1],
            batch_size=1,
            retry=RETRY,
            stats=StageStats(),
        )
    assert watch.undecided()
    with pytest.raises(BrokenBackendError):
        call_model(
            WatchedBackend(failing, "validator", watch).ask,
            [1],
            batch_size=1,
            retry=RETRY,
            stats=StageStats(),
        )

    sometimes = Model(lambda item: "yes" if item == 1 else PermanentBackendError("refusal", "no"))
    watch = FailureWatch("validate", limit=4)
    call_model(
        WatchedBackend(sometimes, "validator", watch).ask,
        list(range(10)),
        batch_size=1,
        retry=RETRY,
        stats=StageStats(),
    )
    assert not watch.undecided()  # one success: the backend works, its failures are items'


def test_mixed_reasons_or_a_limit_of_zero_never_stop():
    from nhr.calls import FailureWatch, WatchedBackend

    reasons = ["timeout", "refusal"]
    mixed = Model(lambda item: PermanentBackendError(reasons[item % 2], ""))
    for limit, model in ((3, mixed), (0, Model(lambda item: PermanentBackendError("auth", "")))):
        results = call_model(
            WatchedBackend(model, "validator", FailureWatch("validate", limit)).ask,
            list(range(10)),
            batch_size=1,
            retry=RETRY,
            stats=StageStats(),
        )
        assert all(isinstance(r, Failure) for r in results)


# --- statistics ------------------------------------------------------------------------------


def test_stats_split_retries_by_cause_and_read_old_markers():
    stats = StageStats()
    stats.add_usage(
        {
            "requests": 9,
            "transport_retries": 3,
            "retries.timeout": 2,
            "retries.rate_limited": 1,
            "retries.connection": 0,
        }
    )
    assert stats.retries_by_cause == {"timeout": 2, "rate_limited": 1, "connection": 0}
    assert stats.usage == {"requests": 9, "transport_retries": 3}
    data = stats.to_dict()
    assert data["retries_by_cause"] == {"rate_limited": 1, "timeout": 2}
    assert StageStats.from_dict(data).retries_by_cause == {"rate_limited": 1, "timeout": 2}
    old = {"rows_in": 3, "rows_out": 1, "failed": {"timeout": 2}, "retries": 4}  # before
    assert StageStats.from_dict(old).retries_by_cause == {}
    assert StageStats.from_dict(old).to_dict()["failed"] == {"timeout": 2}
