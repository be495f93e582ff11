"""The hook an executor uses to share API limits between processes (`share_limits`): a
backend built after it is installed takes its limiter from it, keyed by its model config;
backend code stays the same, and without the hook each backend keeps its own limits."""

from __future__ import annotations

import asyncio

import pytest
from fake_api_server import FakeApiServer

from nhr.backends.api import LocalLimiter, limits_scope, share_limits
from nhr.backends.base import ChatMessage, TextRequest
from nhr.backends.configs import OpenAIBackendConfig
from nhr.backends.openai import OpenAIBackend


class RecordingLimiter(LocalLimiter):
    """The in-process limits, counting what the runner asks of them."""

    def __init__(self, limits) -> None:
        super().__init__(limits)
        self.acquired = self.released = 0
        self.paused: list[float] = []

    async def acquire(self, tokens: int) -> str:
        await super().acquire(tokens)
        self.acquired += 1
        return f"ticket-{self.acquired}"

    def release(self, ticket, unused_tokens: float) -> None:
        assert ticket.startswith("ticket-")
        self.released += 1
        super().release(ticket, unused_tokens)

    def pause(self, seconds: float) -> None:
        self.paused.append(seconds)
        super().pause(seconds)


@pytest.fixture
def server():
    with FakeApiServer(faults={1: "429"}, retry_after="0.05") as fake:
        yield fake


def chat(config: OpenAIBackendConfig, count: int) -> list:
    requests = [TextRequest((ChatMessage("user", f"say {i}"),), max_tokens=8) for i in range(count)]
    return OpenAIBackend(config).chat(requests)


def test_a_shared_limiter_serves_every_request_of_backends_built_after_it(server):
    config = OpenAIBackendConfig(
        backend="openai",
        model="sim-llm",
        base_url=server.openai_url,
        limits={"backoff_s": 0.01, "max_backoff_s": 0.02},
    )
    made: dict[str, RecordingLimiter] = {}

    def factory(scope, limits):
        made[scope] = RecordingLimiter(limits)
        return made[scope]

    share_limits(factory)
    try:
        answers = chat(config, 5)
    finally:
        share_limits(None)
    assert all(isinstance(answer, str) for answer in answers)
    [(scope, limiter)] = made.items()
    assert scope == limits_scope(config)
    # every HTTP request (the 429 and its retry included) took a slot and gave it back
    assert limiter.acquired == limiter.released == server.total_requests == 6
    assert limiter.paused == [pytest.approx(0.05)]  # the server's Retry-After, told to all

    made.clear()
    chat(config, 1)  # the hook removed: the backend enforces its own limits again
    assert not made


def test_limits_scope_is_the_model_config():
    base = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"}
    same = OpenAIBackendConfig(**base)
    assert limits_scope(same) == limits_scope(OpenAIBackendConfig(**base))
    other = OpenAIBackendConfig(**{**base, "limits": {"max_concurrency": 3}})
    assert limits_scope(same) != limits_scope(other)


def test_the_local_limiter_gives_a_slot_back_when_its_wait_is_cancelled():
    from nhr.backends.configs import ApiLimits

    async def scenario() -> None:
        limiter = LocalLimiter(ApiLimits(max_concurrency=1, requests_per_minute=60))
        await limiter.acquire(1)  # the one slot and the one request of this second
        limiter.release(None, 0.0)
        waiting = asyncio.ensure_future(limiter.acquire(1))  # waits for the rate
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not limiter._slots.locked()  # the slot came back

    asyncio.run(scenario())
