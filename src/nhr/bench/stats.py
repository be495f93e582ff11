"""Intervals for benchmark scores: mean +- 95 % over seeds, and the paired bootstrap of a
difference between two editors.

A benchmark metric is computed once per seed (the editor's seed; the judge answers greedily),
so the spread over seeds is the editor's run-to-run variation and the interval is Student's
t over the seeds. Comparing two editors pairs their scores by item and seed and resamples
items (within each task, so every task keeps its share) and seeds together: the interval then
covers both sources of variation at once, as the paper's several-seed tables intend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (above: normal)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile(dof: int) -> float:
    return _T975[dof - 1] if 1 <= dof <= len(_T975) else 1.96


def mean_ci(values: Sequence[float]) -> dict[str, float | None]:
    """{"mean", "ci"}: ci is the half-width of the 95 % interval (mean +- ci) over the values
    (one per seed); None with a single seed, where no spread can be measured."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return {"mean": None, "ci": None}
    mean = float(np.mean(finite))
    if len(finite) < 2:
        return {"mean": round(mean, 4), "ci": None}
    spread = float(np.std(finite, ddof=1)) / math.sqrt(len(finite))
    return {"mean": round(mean, 4), "ci": round(t_quantile(len(finite) - 1) * spread, 4)}


def paired_bootstrap(
    groups: dict[str, int],
    seeds: int,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    rounds: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile interval of each entry of the vector `statistic(item_index,
    seed_index)` over resamples (NaN where a resample could not compute an entry).

    `groups` maps each task to how many items it has (items are numbered task by task in
    that order); items are resampled within their task, seeds among the seeds, and the same
    draw is applied to both editors inside `statistic`, so the difference stays paired."""
    random = np.random.default_rng(seed)
    starts, offset = [], 0
    for count in groups.values():
        starts.append((offset, count))
        offset += count
    draws = []
    for _ in range(rounds):
        items = np.concatenate(
            [start + random.integers(0, count, count) for start, count in starts if count]
        )
        chosen_seeds = random.integers(0, seeds, seeds)
        draws.append(statistic(items, chosen_seeds))
    low, high = np.nanpercentile(np.array(draws, dtype=float), [2.5, 97.5], axis=0)
    return low, high
