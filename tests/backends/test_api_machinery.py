"""The shared API machinery (nhr.backends.api): limits, retries, timeouts, usage and secrets,
first on an in-memory `send`, then through both real SDKs against the fake server."""

from __future__ import annotations

import asyncio
import email.utils
import gc
import io
import logging
import pickle
import subprocess
import sys
import threading
import time

import pytest
from fake_api_server import FakeApiServer
from PIL import Image

from nhr.backends.api import (
    Answer,
    ApiRunner,
    MissingApiKeyError,
    Secret,
    TokenBucket,
    UsageMeter,
    backoff_delay,
    png_of_size,
    retry_after_s,
    transient,
    unexpected,
)
from nhr.backends.base import (
    BackendSetupError,
    ChatMessage,
    PermanentBackendError,
    TextRequest,
    TransientBackendError,
    VisionRequest,
)
from nhr.backends.configs import ApiLimits, GeminiBackendConfig, OpenAIBackendConfig, Prices

KEY = "sk-test-K3Y-do-not-leak-0123456789"
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0}


# --- ApiRunner on an in-memory send -----------------------------------------------------------


async def _close(client: object) -> None:
    pass


def runner(secret: Secret | None = None, prices: Prices | None = None, **limits) -> ApiRunner:
    return ApiRunner(
        "test",
        ApiLimits(**{**FAST, **limits}),
        prices,
        make_client=object,
        close_client=_close,
        classify=unexpected,
        secret=secret,
    )


class Script:
    """An async send whose answers for each request follow a script of errors, then succeed."""

    def __init__(self, errors: dict[str, list] | None = None, delay: float = 0.0) -> None:
        self.errors = {k: list(v) for k, v in (errors or {}).items()}
        self.delay = delay
        self.calls: list[tuple[float, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    async def __call__(self, client: object, request: str) -> Answer:
        with self.lock:
            self.calls.append((time.monotonic(), request))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            pending = self.errors.get(request)
            if pending:
                error = pending.pop(0)
                if isinstance(error, Exception):
                    raise error
            return Answer(f"answer to {request}", input_tokens=10, output_tokens=5)
        finally:
            with self.lock:
                self.in_flight -= 1


def tokens(request: str) -> int:
    return 15


def test_results_come_back_in_order_one_per_request():
    r = runner()
    requests = [f"r{i}" for i in range(20)]
    assert r.run(requests, Script(delay=0.001), tokens) == [f"answer to {q}" for q in requests]
    assert r.run([], Script(), tokens) == []
    r.close()


def test_concurrency_never_exceeds_the_limit():
    r, send = runner(max_concurrency=4), Script(delay=0.02)
    r.run([f"r{i}" for i in range(40)], send, tokens)
    assert send.max_in_flight == 4
    r.close()


def test_concurrency_limit_is_shared_by_batches_from_several_threads():
    r, send = runner(max_concurrency=3), Script(delay=0.02)
    threads = [
        threading.Thread(target=r.run, args=([f"t{t}-{i}" for i in range(10)], send, tokens))
        for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(send.calls) == 40 and send.max_in_flight == 3
    r.close()


def test_transient_errors_are_retried_then_succeed_and_are_counted():
    errors = {"a": [transient("server_error", "boom"), transient("timeout")], "b": []}
    r = runner(max_retries=3)
    assert r.run(["a", "b"], Script(errors), tokens) == ["answer to a", "answer to b"]
    usage = r.usage()
    assert usage["requests"] == 4 and usage["transport_retries"] == 2
    r.close()


def test_after_max_retries_the_item_fails_with_its_reason():
    r = runner(max_retries=2)
    send = Script({"a": [transient("rate_limited")] * 5})
    [result] = r.run(["a"], send, tokens)
    assert isinstance(result, TransientBackendError) and result.reason == "rate_limited"
    assert len(send.calls) == 3
    r.close()


def test_permanent_and_unexpected_errors_are_not_retried():
    r = runner(max_retries=5)
    send = Script({"a": [PermanentBackendError("bad_request", "no")], "b": [KeyError("x")]})
    a, b = r.run(["a", "b"], send, tokens)
    assert a == PermanentBackendError("bad_request", "no")
    assert isinstance(b, TransientBackendError) and b.reason == "exception"
    assert len(send.calls) == 2
    r.close()


def test_retry_after_is_honoured_and_pauses_every_request():
    hinted = transient("rate_limited", "slow down", retry_after=0.3)
    send = Script({"a": [hinted]}, delay=0.0)
    r = runner(max_retries=2, backoff_s=0.0)
    r.run(["a"], send, tokens)
    (first, _), (second, _) = send.calls
    assert second - first >= 0.3
    r.close()


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        delays = [backoff_delay(attempt, 1.0, 4.0) for _ in range(200)]
        assert base * 0.5 <= min(delays) and max(delays) <= base * 1.5
        assert max(delays) - min(delays) > 0.2 * base  # jittered
    assert backoff_delay(1, 1.0, 4.0, 10.0) >= 10.0  # the server's hint wins over a shorter one


def test_a_request_over_its_timeout_fails_as_timeout():
    r = runner(timeout_s=0.1, max_retries=1)
    send = Script(delay=1.0)
    started = time.monotonic()
    [result] = r.run(["a"], send, tokens)
    assert isinstance(result, TransientBackendError) and result.reason == "timeout"
    assert len(send.calls) == 2 and time.monotonic() - started < 0.8
    r.close()


def test_requests_per_minute_spaces_requests():
    # 1200 per minute: a burst of 20 (one second of budget), then one every 50 ms.
    r, send = runner(requests_per_minute=1200, max_concurrency=64), Script()
    r.run([f"r{i}" for i in range(30)], send, tokens)
    times = sorted(t for t, _ in send.calls)
    assert times[-1] - times[0] >= 0.45
    gaps = sorted(b - a for a, b in zip(times[20:], times[21:]))
    assert gaps[len(gaps) // 2] >= 0.04  # the median: a GC pause may bunch a few
    r.close()


def test_tokens_per_minute_limits_and_is_corrected_by_actual_usage():
    # 6000 tokens a minute = 100 a second. Each request is estimated at 50 tokens but uses 15,
    # so after the correction far more than 2 requests a second get through.
    r, send = runner(tokens_per_minute=6000, max_concurrency=64), Script()
    started = time.monotonic()
    r.run([f"r{i}" for i in range(10)], send, lambda request: 50)
    assert time.monotonic() - started < 1.5
    r.close()
    r, send = runner(tokens_per_minute=6000, max_concurrency=64), Script()
    r.run([f"r{i}" for i in range(5)], send, lambda request: 100)  # 100 each, usage 15
    times = sorted(t for t, _ in send.calls)
    assert times[1] - times[0] >= 0.1  # the second waited for budget


def test_token_bucket_lets_a_request_larger_than_its_capacity_through():
    bucket = TokenBucket(per_minute=6000)  # 100 a second, capacity one second's worth
    assert bucket.capacity == 100

    async def take_too_much() -> float:
        started = time.monotonic()
        await bucket.take(150)  # more than the capacity: goes into debt, no deadlock
        await bucket.take(10)  # waits for the 50 of debt and its own 10: about 0.6 s
        return time.monotonic() - started

    assert 0.5 <= asyncio.run(take_too_much()) <= 1.5


def test_usage_and_cost_are_counted():
    prices = Prices(input_per_million_tokens=2.0, output_per_million_tokens=10.0, per_image=0.5)
    meter = UsageMeter(prices)
    meter.add(requests=2, input_tokens=1000, output_tokens=100, images=3)
    usage = meter.snapshot()
    assert usage["requests"] == 2 and usage["images"] == 3
    assert usage["cost_usd"] == pytest.approx(1000 * 2e-6 + 100 * 1e-5 + 1.5)
    assert "cost_usd" not in UsageMeter(None).snapshot()


def test_usage_of_the_runner_sums_what_answers_report():
    r = runner()
    r.run(["a", "b", "c"], Script(), tokens)
    usage = r.usage()
    assert (usage["requests"], usage["input_tokens"], usage["output_tokens"]) == (3, 30, 15)
    r.close()


def test_the_secret_never_shows_and_is_scrubbed_from_error_details():
    secret = Secret(KEY)
    assert KEY not in repr(secret) and KEY not in str(secret) and secret.reveal() == KEY
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    r = runner(secret=secret)
    send = Script({"a": [PermanentBackendError("auth", f"Incorrect API key provided: {KEY}")]})
    [error] = r.run(["a"], send, tokens)
    assert error.reason == "auth" and KEY not in str(error) and "***" in error.detail
    r.close()


def test_close_stops_the_loop_thread_and_collection_does_too():
    def loop_threads() -> int:
        return sum(t.name == "nhr-test" for t in threading.enumerate())

    before = loop_threads()
    r = runner()
    r.run(["a"], Script(), tokens)
    assert loop_threads() == before + 1
    r.close()
    r.close()  # twice is fine
    assert loop_threads() == before
    assert r.run(["b"], Script(), tokens) == ["answer to b"]  # a new loop, a new client
    r.close()
    assert loop_threads() == before


def test_a_client_that_cannot_be_built_stops_the_run_with_a_setup_error():
    def no_credentials() -> object:
        raise ValueError(f"no default credentials found (key {KEY})")

    r = ApiRunner(
        "test",
        ApiLimits(),
        None,
        make_client=no_credentials,
        close_client=_close,
        classify=unexpected,
        secret=Secret(KEY),
    )
    with pytest.raises(BackendSetupError) as caught:
        r.run(["a"], Script(), tokens)
    assert "no default credentials" in str(caught.value) and KEY not in str(caught.value)
    r.close()


def test_retry_after_parsing():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "0.25"}) == 0.25
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 27 <= retry_after_s({"retry-after": date}) <= 31
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert retry_after_s({"retry-after": past}) == 0.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None and retry_after_s(None) is None


def _png(width: int, height: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), "red").save(out, format=fmt)
    return out.getvalue()


def test_png_of_size_keeps_a_right_sized_png_byte_exact_and_fixes_the_rest():
    exact = _png(32, 24)
    assert png_of_size(exact, 32, 24) is exact
    for data in (_png(64, 48), _png(32, 24, fmt="JPEG"), _png(10, 10, mode="P")):
        fixed = png_of_size(data, 32, 24)
        with Image.open(io.BytesIO(fixed)) as image:
            assert (image.format, image.size) == ("PNG", (32, 24))
    with pytest.raises(ValueError):
        png_of_size(b"not an image", 32, 24)


def test_import_nhr_does_not_import_the_sdks():
    code = (
        "import sys, nhr, nhr.backends, nhr.backends.api, nhr.config\n"
        "bad = [m for m in ('openai', 'google.genai', 'httpx2', 'httpx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- both SDKs against the fake server ---------------------------------------------------------


def make_backend(family: str, server: FakeApiServer, **fields):
    limits = {**FAST, **fields.pop("limits", {})}
    if family == "openai":
        from nhr.backends.openai import OpenAIBackend

        config = OpenAIBackendConfig(
            backend="openai",
            model="sim-llm",
            base_url=server.openai_url,
            api_key_env="NHR_TEST_KEY",
            limits=limits,
            **fields,
        )
        return OpenAIBackend(config)
    from nhr.backends.gemini import GeminiBackend

    config = GeminiBackendConfig(
        backend="gemini",
        model="sim-llm",
        base_url=server.url,
        api_key_env="NHR_TEST_KEY",
        limits=limits,
        **fields,
    )
    return GeminiBackend(config)


def chat_request(i: int = 0) -> TextRequest:
    return TextRequest((ChatMessage("user", f"Hello number {i}"),), max_tokens=64)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("NHR_TEST_KEY", KEY)
    return KEY


families = pytest.mark.parametrize("family", ["openai", "gemini"])


@families
def test_server_never_sees_more_than_max_concurrency(family, key):
    with FakeApiServer(latency_s=0.05) as server:
        backend = make_backend(family, server, limits={"max_concurrency": 6})
        answers = backend.chat([chat_request(i) for i in range(40)])
        backend.close()
    assert all(isinstance(a, str) for a in answers)
    assert server.max_in_flight == 6 and server.total_requests == 40


@families
def test_rate_limit_retry_waits_for_retry_after(family, key):
    with FakeApiServer(faults={1: "429"}, retry_after="0.2") as server:
        backend = make_backend(family, server, limits={"backoff_s": 0.0})
        [answer] = backend.chat([chat_request()])
        usage = backend.usage()
        backend.close()
    assert isinstance(answer, str)
    (first, _), (second, _) = server.arrivals
    assert second - first >= 0.2
    assert usage["requests"] == 2 and usage["transport_retries"] == 1


@families
def test_server_errors_are_retried(family, key):
    with FakeApiServer(faults={1: "500", 2: "500"}) as server:
        backend = make_backend(family, server, limits={"max_retries": 3})
        [answer] = backend.chat([chat_request()])
        assert backend.usage()["transport_retries"] == 2
        backend.close()
    assert isinstance(answer, str)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("500", "server_error"),
        ("429", "rate_limited"),
        ("malformed", "malformed_response"),
        ("hang", "timeout"),
    ],
)
@families
def test_persistent_faults_end_as_item_errors_with_their_reason(family, key, fault, reason):
    with FakeApiServer(fault_rates={fault: 1.0}, retry_after="0.01", hang_s=2.0) as server:
        backend = make_backend(family, server, limits={"max_retries": 1, "timeout_s": 0.3})
        answers = backend.chat([chat_request(0), chat_request(1)])
        backend.close()
    assert all(isinstance(a, TransientBackendError) and a.reason == reason for a in answers)
    assert server.total_requests == 4


@families
def test_one_malformed_body_or_timeout_is_retried_away(family, key):
    with FakeApiServer(faults={1: "malformed", 2: "hang"}, hang_s=2.0) as server:
        backend = make_backend(family, server, limits={"max_retries": 3, "timeout_s": 0.3})
        [answer] = backend.chat([chat_request()])
        backend.close()
    assert isinstance(answer, str) and server.total_requests == 3


@families
def test_connection_refused_is_a_connection_error(family, key):
    with FakeApiServer() as server:
        backend = make_backend(family, server, limits={"max_retries": 1})
    # the server is gone now: its port refuses connections
    [answer] = backend.chat([chat_request()])
    backend.close()
    assert isinstance(answer, TransientBackendError) and answer.reason == "connection"


@pytest.mark.parametrize(("fault", "reason"), [("400", "bad_request"), ("401", "auth")])
@families
def test_client_errors_fail_at_once(family, key, fault, reason):
    with FakeApiServer(fault_rates={fault: 1.0}) as server:
        backend = make_backend(family, server)
        [answer] = backend.chat([chat_request()])
        backend.close()
    assert isinstance(answer, PermanentBackendError) and answer.reason == reason
    assert server.total_requests == 1


@families
def test_requests_per_minute_spaces_requests_on_the_wire(family, key):
    limits = {"requests_per_minute": 1200, "max_concurrency": 64}
    with FakeApiServer() as server:
        backend = make_backend(family, server, limits=limits)
        backend.chat([chat_request(i) for i in range(40)])
        backend.close()
    times = sorted(t for t, _ in server.arrivals)
    # 20 at once (one second of budget), then one every 50 ms: about 1 s. A client-side pause
    # during the first burst (the SDK's first request, a GC) delays its arrivals and shortens
    # what the server sees by as much, hence the margin.
    assert times[-1] - times[0] >= 0.7


@families
def test_usage_and_cost_come_from_the_answers(family, key):
    prices = {"input_per_million_tokens": 1000.0, "output_per_million_tokens": 2000.0}
    with FakeApiServer() as server:
        backend = make_backend(family, server, prices=prices)
        backend.chat([chat_request(i) for i in range(3)])
        usage = backend.usage()
        backend.close()
    assert usage["requests"] == 3 and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    expected = usage["input_tokens"] * 1e-3 + usage["output_tokens"] * 2e-3
    assert usage["cost_usd"] == pytest.approx(expected)


@families
def test_the_key_is_sent_but_never_shown(family, key, caplog):
    caplog.set_level(logging.DEBUG)
    faults = {1: "429", 2: "500", 3: "malformed", 4: "401", 5: "hang"}
    with FakeApiServer(faults=faults, retry_after="0", hang_s=1.0) as server:
        backend = make_backend(family, server, limits={"max_retries": 2, "timeout_s": 0.3})
        answers = backend.chat([chat_request(i) for i in range(4)])
        shown = [repr(backend), str(backend.info()), repr(backend.usage()), *map(repr, answers)]
        shown += [str(a) for a in answers]
        state = pickle.dumps(backend)
        backend.close()
    expected = f"Bearer {KEY}" if family == "openai" else KEY
    assert server.keys_seen and set(server.keys_seen) == {expected}
    assert "retry" in caplog.text  # the logs were captured, and they name no key
    for text in [*shown, caplog.text]:
        assert KEY not in text
    assert KEY.encode() not in state


@families
def test_missing_key_names_the_variable(family, monkeypatch):
    monkeypatch.delenv("NHR_TEST_KEY", raising=False)
    with FakeApiServer() as server:
        if family == "openai":  # a base_url (local server) needs no key...
            backend = make_backend(family, server)
            assert isinstance(backend.chat([chat_request()])[0], str)
            backend.close()
            assert server.keys_seen == ["Bearer not-needed"]
            from nhr.backends.openai import OpenAIBackend

            config = OpenAIBackendConfig(backend="openai", model="m", api_key_env="NHR_TEST_KEY")
            with pytest.raises(MissingApiKeyError) as caught:  # ...the real API does
                OpenAIBackend(config)
        else:
            with pytest.raises(MissingApiKeyError) as caught:
                make_backend(family, server)
    assert caught.value.variable == "NHR_TEST_KEY" and "NHR_TEST_KEY" in str(caught.value)


@families
def test_backend_pickles_without_its_key_and_works_again(family, key):
    with FakeApiServer() as server:
        backend = make_backend(family, server)
        clone = pickle.loads(pickle.dumps(backend))
        assert clone.chat([chat_request()]) == backend.chat([chat_request()])
        clone.close()
        backend.close()


@families
def test_an_unused_backend_is_collected_and_its_loop_stopped(family, key):
    def loop_threads() -> int:
        return sum(t.name == f"nhr-{family}" for t in threading.enumerate())

    before = loop_threads()
    with FakeApiServer() as server:
        backend = make_backend(family, server)
        backend.chat([chat_request()])
        assert loop_threads() == before + 1
        del backend
        gc.collect()
    assert loop_threads() == before


@families
def test_vision_batch_of_many_requests(family, key):
    """A bigger vision batch (the judges' shape) under a small concurrency limit."""
    from nhr.backends.base import GenerateRequest
    from nhr.backends.sim import SimBackend, SimBackendConfig

    image = SimBackend(SimBackendConfig(scale=1.0)).generate(
        [GenerateRequest("A photo of a red apple", 64, 48, 0)]
    )[0]
    requests = [
        VisionRequest((image,), f"Is this image aesthetically pleasing? ({i})") for i in range(24)
    ]
    with FakeApiServer(latency_s=0.02) as server:
        backend = make_backend(family, server, limits={"max_concurrency": 4})
        answers = backend.ask(requests)
        backend.close()
    assert all(isinstance(a, str) for a in answers) and server.max_in_flight <= 4


@pytest.mark.parametrize(("family", "module"), [("openai", "openai"), ("gemini", "google.genai")])
def test_a_missing_sdk_says_which_extra_to_install(family, module, key, monkeypatch):
    from nhr.backends.base import MissingExtraError

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with FakeApiServer() as server, pytest.raises(MissingExtraError) as caught:
        make_backend(family, server)
    assert f"pip install 'nhr[{family}]'" in str(caught.value)


# --- one retry budget ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason"), [("503", "server_error"), ("malformed", "malformed_response")]
)
@families
def test_an_item_costs_at_most_max_retries_plus_one_requests_through_call_model(
    family, key, fault, reason
):
    """The backend retries transport errors; call_model must not send them again (before,
    503 forever cost (max_retries + 1) x retry.max_attempts requests: 7 x 4 = 28)."""
    from nhr.calls import Failure, call_model
    from nhr.config import RetrySection
    from nhr.stats import StageStats

    retry = RetrySection(max_attempts=4, backoff_s=0.0, max_backoff_s=0.0)
    with FakeApiServer(fault_rates={fault: 1.0}) as server:
        backend = make_backend(family, server, limits={"max_retries": 3})
        stats = StageStats()
        results = call_model(
            backend.chat, [chat_request(0), chat_request(1)], batch_size=2, retry=retry, stats=stats
        )
        usage = backend.usage()
        backend.close()
    assert results == [Failure(reason, results[0].detail)] * 2
    assert server.total_requests == 2 * (3 + 1)
    assert stats.retries == 0 and stats.model_calls == 2
    assert usage["transport_retries"] == 6 and usage[f"retries.{reason}"] == 6


def test_with_no_retries_configured_an_item_costs_one_request(key):
    from nhr.calls import call_model
    from nhr.config import RetrySection
    from nhr.stats import StageStats

    with FakeApiServer(fault_rates={"503": 1.0}) as server:
        backend = make_backend("openai", server, limits={"max_retries": 0})
        call_model(
            backend.chat, [chat_request()], batch_size=1, retry=RetrySection(), stats=StageStats()
        )
        backend.close()
    assert server.total_requests == 1


def test_retries_are_counted_by_cause(key):
    faults = {1: "429", 2: "503", 3: "malformed", 4: "hang", 5: "empty"}
    with FakeApiServer(faults=faults, retry_after="0", hang_s=2.0) as server:
        backend = make_backend("openai", server, limits={"max_retries": 5, "timeout_s": 0.3})
        [answer] = backend.chat([chat_request()])
        usage = backend.usage()
        backend.close()
    assert isinstance(answer, str) and server.total_requests == 6
    causes = {k.removeprefix("retries."): v for k, v in usage.items() if k.startswith("retries.")}
    assert causes == {"rate_limited": 1, "server_error": 1, "malformed_response": 2, "timeout": 1}
    assert usage["transport_retries"] == 5


def test_the_first_request_failing_for_a_reason_is_shown_without_verbose(caplog):
    caplog.set_level(logging.INFO, logger="nhr.backends.api")
    r = runner(max_retries=0)
    r.run(["a", "b"], Script({"a": [transient("timeout")], "b": [transient("timeout")]}), tokens)
    r.close()
    levels = [record.levelno for record in caplog.records if "failed after" in record.message]
    assert sorted(levels) == [logging.INFO, logging.WARNING]
