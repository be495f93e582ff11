"""Fault injection: exceptions, timeouts, refusals, malformed text and latency at set rates.

Each decision is a deterministic function of (request digest, attempt number), where the
attempt number counts how often this backend instance has seen the same request. A retry
therefore gets a fresh draw, while a rerun of the whole pipeline sees the same faults.
"""

from __future__ import annotations

import threading
from collections import Counter

from nhr.backends.base import BackendError, PermanentBackendError, TransientBackendError
from nhr.backends.sim.config import SimFaults
from nhr.backends.sim.world import uniform

# Garbage that no sane parser takes for an answer, per kind of text task.
GARBAGE: dict[str, tuple[str, ...]] = {
    "design": ('[{"prompt": "A flat illustration of a kitchen with', "I'm not sure.", ""),
    "invert": ("", "   "),
    "score": ('{"InstructionAdherence": 4.', "The edit looks fine overall.", ""),
    "yes_no": ("Maybe.", "I cannot tell.", ""),
    "other": ("", "I'm not sure."),
}


class FaultInjector:
    def __init__(self, faults: SimFaults, model: str) -> None:
        self.faults = faults
        self.model = model
        self._attempts: Counter[bytes] = Counter()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        """Picklable (for process or Ray executors): the lock is recreated on load."""
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def attempt(self, key: bytes) -> int:
        """Count one more call with this request digest; returns its attempt number (0-based)."""
        with self._lock:
            number = self._attempts[key]
            self._attempts[key] += 1
        return number

    def draw(self, key: bytes, text: bool) -> BackendError | str | None:
        """An error for this item, "malformed" (text tasks only), or None (no fault)."""
        attempt = self.attempt(key)
        u = uniform("fault", self.model, key, attempt)
        f = self.faults
        if u < f.exception:
            return TransientBackendError("exception", f"simulated server error (attempt {attempt})")
        u -= f.exception
        if u < f.timeout:
            return TransientBackendError("timeout", f"simulated timeout (attempt {attempt})")
        u -= f.timeout
        if u < f.refusal:
            return PermanentBackendError("refusal", "simulated refusal")
        u -= f.refusal
        if text and u < f.malformed:
            return "malformed"
        return None

    def garbage(self, key: bytes, task: str) -> str:
        options = GARBAGE.get(task, GARBAGE["other"])
        return options[int(uniform("garbage", self.model, key) * len(options))]
