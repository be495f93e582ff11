"""The survival curve S(T) and the knee-midpoint threshold rule (docs/method.md §4).

S(T) is the share of the validated pool whose adherence AND aesthetics are both >= T. In the
reference run S(T) declines gently, then falls off a cliff; the operating point is the midpoint
between the two knees of that cliff.

How the knees are found (documented in docs/thresholds.md as well):
  1. Evaluate S on a grid of thresholds with step `step` (default 0.1, the validator's
     resolution), and the relative change of each step r(T) = S(T) / S(T - step) - 1.
  2. Ignore steps that end with too few items to say anything (S(T) * pool < `min_items`):
     the tail where S is nearly 0 (perfect scores only) always "falls" steeply.
  3. The first knee is the step with the steepest relative fall (at least `min_fall`, or the
     curve has no cliff and no suggestion is made); the second is the steepest relative fall
     at least `min_gap` away from the first.
  4. The suggested threshold is the midpoint of the two knees, rounded to the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Knees:
    first: float
    second: float
    first_change: float  # relative change of S at that step, e.g. -0.621
    second_change: float
    suggested: float


def grid(low: float = 1.0, high: float = 5.0, step: float = 0.1) -> np.ndarray:
    return np.round(np.arange(low, high + step / 2, step), 4)


def survival_curve(
    adherence: np.ndarray, aesthetics: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """S(T) for each T: share of pairs with both scores >= T (a tiny epsilon absorbs float
    noise such as 4.7 stored as 4.699999)."""
    adherence = np.asarray(adherence, dtype=float)
    aesthetics = np.asarray(aesthetics, dtype=float)
    if adherence.size == 0:
        return np.zeros(len(thresholds))
    low = np.minimum(adherence, aesthetics)[None, :]
    return (low >= np.asarray(thresholds)[:, None] - 1e-6).mean(axis=1)


def find_knees(
    thresholds: np.ndarray,
    survival: np.ndarray,
    pool: int,
    *,
    min_items: int = 10,
    min_gap: float = 0.2,
    min_fall: float = 0.05,
) -> Knees | None:
    """The two knees of S(T) and their midpoint, or None when the curve is too flat/short."""
    thresholds = np.asarray(thresholds, dtype=float)
    survival = np.asarray(survival, dtype=float)
    candidates = []
    for i in range(1, len(thresholds)):
        before = survival[i - 1]
        if survival[i] * pool < min_items or before <= 0:
            continue
        candidates.append((survival[i] / before - 1.0, thresholds[i]))
    if len(candidates) < 2:
        return None
    candidates.sort()
    first_change, first = candidates[0]
    if first_change > -min_fall:  # no cliff at all
        return None
    rest = [(c, t) for c, t in candidates[1:] if abs(t - first) >= min_gap - 1e-9]
    if not rest:
        return None
    second_change, second = rest[0]
    low, high = sorted((first, second))
    low_change, high_change = (
        (first_change, second_change) if first < second else (second_change, first_change)
    )
    step = float(thresholds[1] - thresholds[0])
    suggested = round(round(((low + high) / 2) / step) * step, 4)
    return Knees(low, high, low_change, high_change, suggested)
