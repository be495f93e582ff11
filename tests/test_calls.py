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
    assert sleeps == [7.5]


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
