"""Deterministic ids and seeds.

Every row id and model seed is a hash of its parents and the run seed, so re-running a stage,
resuming it after a crash or running it on another machine gives the same rows.
"""

from __future__ import annotations

import hashlib

_SEP = "\x1f"  # a separator no id part contains, so ("ab", "c") != ("a", "bc")


def _digest(parts: tuple[object, ...]) -> bytes:
    return hashlib.sha256(_SEP.join(str(p) for p in parts).encode("utf-8")).digest()


def stable_id(*parts: object) -> str:
    """A 16-hex-digit id (64 bits) derived from `parts`."""
    return _digest(parts)[:8].hex()


def derive_seed(*parts: object) -> int:
    """A seed in [0, 2**31): accepted by torch, numpy, PIL and the OpenAI `seed` field alike."""
    return int.from_bytes(_digest(parts)[:4], "big") & 0x7FFFFFFF


def unit_interval(*parts: object) -> float:
    """A uniform draw in [0, 1) derived from `parts` (used for sampling without state)."""
    return int.from_bytes(_digest(parts)[:8], "big") / 2**64
