"""`SimBackend`: the simulator behind all four model protocols (text, vision, generate, edit)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from nhr.backends.base import (
    BackendError,
    CallInfo,
    EditRequest,
    GenerateRequest,
    PermanentBackendError,
    TextRequest,
    VisionRequest,
)
from nhr.backends.sim import llm, vision
from nhr.backends.sim.config import SimBackendConfig
from nhr.backends.sim.editor import OUTCOMES, edit_png
from nhr.backends.sim.faults import FaultInjector
from nhr.backends.sim.generator import generate_png
from nhr.backends.sim.tasks import text_task
from nhr.backends.sim.world import digest

T = TypeVar("T")
R = TypeVar("R")


class SimBackend:
    """A deterministic CPU world that answers like the real model stack (see docs/simulator.md).

    One instance can play any role; the role is decided by which method is called and, for
    text and vision, by the prompt template in the request.
    """

    def __init__(self, config: SimBackendConfig) -> None:
        self.config = config
        self._faults = FaultInjector(self.config.faults, self.config.model)

    def info(self) -> CallInfo:
        c = self.config
        return CallInfo(
            backend="sim",
            model=c.model,
            params={
                "scale": c.scale,
                "score_noise": c.score_noise,
                "yes_no_flip": c.yes_no_flip,
                "defect_detection": c.defect_detection,
                "editor_error_rate": round(
                    sum(getattr(c.editor_errors, name) for name in OUTCOMES), 4
                ),
            },
        )

    # --- protocols -------------------------------------------------------------------------

    def chat(self, requests: Sequence[TextRequest]) -> list[str | BackendError]:
        def one(request: TextRequest, key: bytes) -> str | BackendError:
            text = "\n".join(m.content for m in request.messages)
            return llm.answer(text, request.seed, self.config)

        def key_of(request: TextRequest) -> bytes:
            seed = request.seed if request.temperature > 0 else None
            return digest("chat", seed, *[(m.role, m.content) for m in request.messages])

        def garbage(request: TextRequest, key: bytes) -> str:
            return self._faults.garbage(key, _chat_task(request))

        return self._run(requests, key_of, one, garbage)

    def ask(self, requests: Sequence[VisionRequest]) -> list[str | BackendError]:
        def one(request: VisionRequest, key: bytes) -> str | BackendError:
            return vision.answer(request, self.config)

        def garbage(request: VisionRequest, key: bytes) -> str:
            return self._faults.garbage(key, _vision_task(request))

        return self._run(requests, vision.request_key, one, garbage)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[bytes | BackendError]:
        def one(request: GenerateRequest, key: bytes) -> bytes | BackendError:
            if request.width <= 0 or request.height <= 0:
                return PermanentBackendError("invalid_request", "width and height must be > 0")
            c = self.config
            return generate_png(
                request.prompt,
                request.width,
                request.height,
                request.seed,
                c.scale,
                c.generator_errors,
                c.model,
            )

        def key_of(request: GenerateRequest) -> bytes:
            return digest("generate", request.prompt, request.width, request.height, request.seed)

        return self._run(requests, key_of, one)

    def edit(self, requests: Sequence[EditRequest]) -> list[bytes | BackendError]:
        def one(request: EditRequest, key: bytes) -> bytes | BackendError:
            try:
                return edit_png(
                    request.image,
                    request.instruction,
                    request.seed,
                    self.config.editor_errors,
                    self.config.model,
                )
            except ValueError as exc:
                return PermanentBackendError("invalid_request", str(exc))

        def key_of(request: EditRequest) -> bytes:
            return digest("edit", request.image, request.instruction, request.seed)

        return self._run(requests, key_of, one)

    # --- shared per-item loop ----------------------------------------------------------------

    def _run(
        self,
        requests: Sequence[T],
        key_of: Callable[[T], bytes],
        one: Callable[[T, bytes], R | BackendError],
        garbage: Callable[[T, bytes], R] | None = None,
    ) -> list[R | BackendError]:
        """Answer requests one by one, in order, with faults drawn per item.

        `garbage` gives a malformed answer for text tasks; without it (images) the
        "malformed" fault does not apply.
        """
        results: list[R | BackendError] = []
        latency = self.config.faults.latency_s
        for request in requests:
            if latency > 0:
                time.sleep(latency)
            key = key_of(request)
            fault = self._faults.draw(key, text=garbage is not None)
            if isinstance(fault, BackendError):
                results.append(fault)
            elif fault == "malformed" and garbage is not None:
                results.append(garbage(request, key))
            else:
                results.append(one(request, key))
        return results


def _chat_task(request: TextRequest) -> str:
    task = text_task("\n".join(m.content for m in request.messages))
    return "other" if task == "unknown" else task


def _vision_task(request: VisionRequest) -> str:
    task = vision.detect_task(f"{request.system or ''}\n{request.prompt}")
    return {"score": "score", "unwanted": "yes_no", "gate": "yes_no", "aesthetic": "yes_no"}.get(
        task, "other"
    )
