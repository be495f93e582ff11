"""Per-stage counters that every stage fills as a by-product of its work.

A stage counts rows in and out, drops and failures by reason, and what it spent on models.
Each finished shard stores its counters in its completion marker; `stats.json` is their sum.

Retries are counted twice over, on purpose: `retries` counts the items the stage itself sent
again (re-asks of unparseable answers, and retries for backends that do not retry
themselves), while `retries_by_cause` counts every retry, wherever it was made, by cause:
`timeout`, `rate_limited` (HTTP 429), `server_error` (5xx), `malformed_response` (a broken or
empty answer), `connection`, `exception` (a backend raised) and `unparseable` (a re-ask).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Usage counters named `retries.<cause>` (what API backends report about their transport
# retries) are moved into `StageStats.retries_by_cause` by `add_usage`.
RETRY_CAUSE_PREFIX = "retries."


@dataclass
class StageStats:
    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    model_calls: int = 0  # items sent to a model, retries included
    model_batches: int = 0
    retries: int = 0
    model_seconds: float = 0.0
    # What API backends report spending (tokens, images, money, transport retries), when they
    # report it; keys are backend-defined counters such as input_tokens or cost_usd.
    usage: Counter[str] = field(default_factory=Counter)
    retries_by_cause: Counter[str] = field(default_factory=Counter)  # every layer's retries

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def fail(self, reason: str, count: int = 1) -> None:
        self.failed[reason] += count

    def add_usage(self, usage: Mapping[str, float]) -> None:
        """Add a backend's usage counters; its `retries.<cause>` go to `retries_by_cause`."""
        for key, value in usage.items():
            if key.startswith(RETRY_CAUSE_PREFIX):
                self.retries_by_cause[key.removeprefix(RETRY_CAUSE_PREFIX)] += int(value)
            else:
                self.usage[key] += value

    def merge(self, other: StageStats) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.dropped.update(other.dropped)
        self.failed.update(other.failed)
        self.model_calls += other.model_calls
        self.model_batches += other.model_batches
        self.retries += other.retries
        self.model_seconds += other.model_seconds
        self.usage.update(other.usage)
        self.retries_by_cause.update(other.retries_by_cause)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(sorted(self.dropped.items())),
            "failed": dict(sorted(self.failed.items())),
            "model_calls": self.model_calls,
            "model_batches": self.model_batches,
            "retries": self.retries,
            "retries_by_cause": {k: v for k, v in sorted(self.retries_by_cause.items()) if v},
            "model_seconds": round(self.model_seconds, 4),
            "usage": {k: round(v, 6) for k, v in sorted(self.usage.items()) if v},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageStats:
        """Also reads markers written before a counter existed (it is then zero)."""
        return cls(
            rows_in=int(data.get("rows_in", 0)),
            rows_out=int(data.get("rows_out", 0)),
            dropped=Counter(data.get("dropped", {})),
            failed=Counter(data.get("failed", {})),
            model_calls=int(data.get("model_calls", 0)),
            model_batches=int(data.get("model_batches", 0)),
            retries=int(data.get("retries", 0)),
            model_seconds=float(data.get("model_seconds", 0.0)),
            usage=Counter(data.get("usage", {})),
            retries_by_cause=Counter(data.get("retries_by_cause", {})),
        )


def top_reasons(stage: Mapping[str, Any], limit: int = 3) -> list[tuple[str, int]]:
    """The most frequent failure and drop reasons of one stage entry of stats.json, as
    ("failed: timeout", 120) pairs, most frequent first."""
    counts = [(f"failed: {k}", int(v)) for k, v in (stage.get("failed") or {}).items()]
    counts += [(f"dropped: {k}", int(v)) for k, v in (stage.get("dropped") or {}).items()]
    counts = [(name, count) for name, count in counts if count]
    return sorted(counts, key=lambda item: (-item[1], item[0]))[:limit]
