"""The four model protocols every backend implements, their request types and errors.

Backends are the only code that knows a model. A backend takes a batch of requests and
returns one entry per request, in order: the output, or a `BackendError` for that item.
A failure of the whole call (server down, out of memory) may also be raised; the caller
then treats every item of the batch as failed with that error. Images cross this boundary
as encoded PNG bytes, so they can be hashed, stored and shipped between processes as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class BackendError(Exception):
    """A model call that did not give a usable answer.

    `reason` is a short, stable label used in statistics (``timeout``, ``exception``,
    ``rate_limited``, ``safety``, ``refusal``...). `retryable` says whether the same call
    may succeed later.
    """

    retryable = False

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and self.reason == other.reason  # type: ignore[attr-defined]
            and self.detail == other.detail  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.reason, self.detail))


class TransientBackendError(BackendError):
    """Timeouts, rate limits, 5xx: worth retrying with backoff."""

    retryable = True


class PermanentBackendError(BackendError):
    """Refusals, safety blocks, invalid requests: retrying gives the same answer."""

    retryable = False


class BackendSetupError(RuntimeError):
    """Something the user must fix before any call can work (a missing key, a model folder
    that does not exist). Unlike item errors it stops the run with its message."""


class MissingExtraError(ImportError):
    """A backend needs an optional dependency that is not installed."""


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class TextRequest:
    messages: tuple[ChatMessage, ...]
    temperature: float = 0.0
    max_tokens: int = 4096
    seed: int | None = None


@dataclass(frozen=True)
class VisionRequest:
    """A question about one or more images (PNG bytes), answered in text."""

    images: tuple[bytes, ...]
    prompt: str
    system: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int | None = None


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    width: int
    height: int
    seed: int


@dataclass(frozen=True)
class EditRequest:
    image: bytes
    instruction: str
    seed: int


@dataclass
class CallInfo:
    """What a backend reports about itself; copied into every row it produced."""

    backend: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TextModel(Protocol):
    def info(self) -> CallInfo: ...

    def chat(self, requests: Sequence[TextRequest]) -> list[str | BackendError]: ...


@runtime_checkable
class VisionModel(Protocol):
    def info(self) -> CallInfo: ...

    def ask(self, requests: Sequence[VisionRequest]) -> list[str | BackendError]: ...


@runtime_checkable
class ImageGenerator(Protocol):
    def info(self) -> CallInfo: ...

    def generate(self, requests: Sequence[GenerateRequest]) -> list[bytes | BackendError]: ...


@runtime_checkable
class ImageEditor(Protocol):
    def info(self) -> CallInfo: ...

    def edit(self, requests: Sequence[EditRequest]) -> list[bytes | BackendError]: ...
