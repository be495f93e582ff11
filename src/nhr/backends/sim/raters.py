"""Simulated human raters: the panel that labels a calibration population.

The NHR paper (arXiv 2507.14119) labelled its validator's training and validation triplets with
2-4 human raters per triplet on two 1-5 scales, and corrected each rater's bias: b_j = mean over
rater j's items of (s_ij - mean_i), label S_i = mean over the item's raters of (s_ij - b_j).
Its raters agreed with a mean pairwise Spearman of 0.64 on instruction adherence and 0.41 on
aesthetics. Here every rater has a personal bias (relative to the pool's consensus) and noise
per scale and answers whole points, optionally agreeing more at the ends of the scale
(`end_spread`); items are rated in batches, each batch by its own 2-4 raters drawn from the
pool, so every pair of raters that shares a batch can be compared. A corrected label stays on
the 1-5 scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np


@dataclass(frozen=True)
class RaterPool:
    """Who rates: pool size and the spread of personal bias and noise, per scale
    (instruction adherence, aesthetics). Calibrated on calibration.population() so the mean
    pairwise Spearman is the paper's 0.64 / 0.41 (docs/simulator.md)."""

    raters: int = 12
    bias_sd: tuple[float, float] = (0.5, 0.5)
    noise_sd: tuple[float, float] = (0.7, 0.6)
    batch_size: int = 40
    per_item: tuple[int, int] = (2, 4)  # fewest and most raters per item
    # Share of a rater's bias and noise left at the ends of the scale (a true score of 1 or
    # 5), growing linearly to all of it at 3: raters agree most on clear successes and obvious
    # failures. 1: the same spread everywhere.
    end_spread: float = 1.0


@dataclass(frozen=True)
class Ratings:
    """Scores of one rating round: one row per (item, rater)."""

    item: np.ndarray  # (m,) item index
    rater: np.ndarray  # (m,) rater index
    batch: np.ndarray  # (m,) batch index
    scores: np.ndarray  # (m, 2) whole points 1-5: adherence, aesthetics
    bias: np.ndarray  # (raters, 2) the raters' true personal bias


def rate(true_scores: np.ndarray, pool: RaterPool = RaterPool(), seed: int = 0) -> Ratings:
    """Ratings of items with the given (n, 2) true scores."""
    random = np.random.default_rng(seed)
    true_scores = np.asarray(true_scores, dtype=float)
    bias = random.normal(0.0, pool.bias_sd, size=(pool.raters, 2))
    # A bias is personal: relative to the pool's consensus, which is what the scale means.
    # (Uncentred, the pool's mean bias would shift every label of a rating round alike.)
    bias -= bias.mean(axis=0)
    items, raters, batches = [], [], []
    for batch, start in enumerate(range(0, len(true_scores), pool.batch_size)):
        count = random.integers(pool.per_item[0], pool.per_item[1] + 1)
        panel = random.choice(pool.raters, size=count, replace=False)
        for item in range(start, min(start + pool.batch_size, len(true_scores))):
            for rater in panel:
                items.append(item)
                raters.append(rater)
                batches.append(batch)
    item = np.array(items)
    rater = np.array(raters)
    noise = random.normal(0.0, pool.noise_sd, size=(len(item), 2))
    true = true_scores[item]
    middle = np.clip(1.0 - np.abs(true - 3.0) / 2.0, 0.0, 1.0)
    spread = pool.end_spread + (1.0 - pool.end_spread) * middle
    scores = np.clip(np.rint(true + bias[rater] * spread + noise * spread), 1, 5)
    return Ratings(item, rater, np.array(batches), scores, bias)


def plain_labels(ratings: Ratings, count: int) -> np.ndarray:
    """(count, 2) mean of each item's raw scores."""
    total = np.zeros((count, 2))
    np.add.at(total, ratings.item, ratings.scores)
    raters = np.bincount(ratings.item, minlength=count)[:, None]
    return total / np.maximum(raters, 1)


def corrected_labels(ratings: Ratings, count: int) -> np.ndarray:
    """(count, 2) the paper's labels: each rater's bias (mean deviation from the item means
    over the rater's items) removed before averaging, kept on the raters' 1-5 scale (the
    correction of a strict rater could carry a perfect item past 5)."""
    means = plain_labels(ratings, count)
    deviation = ratings.scores - means[ratings.item]
    rater_count = int(ratings.rater.max()) + 1
    total = np.zeros((rater_count, 2))
    np.add.at(total, ratings.rater, deviation)
    rated = np.bincount(ratings.rater, minlength=rater_count)[:, None]
    bias = total / np.maximum(rated, 1)
    corrected = Ratings(
        ratings.item, ratings.rater, ratings.batch, ratings.scores - bias[ratings.rater], bias
    )
    return np.clip(plain_labels(corrected, count), 1.0, 5.0)


def agreement(ratings: Ratings) -> tuple[float, float]:
    """Mean pairwise Spearman between raters who rated the same batch, per scale."""
    from scipy.stats import spearmanr

    values: list[list[float]] = [[], []]
    for batch in np.unique(ratings.batch):
        rows = np.flatnonzero(ratings.batch == batch)
        by_rater = {r: rows[ratings.rater[rows] == r] for r in np.unique(ratings.rater[rows])}
        for first, second in combinations(sorted(by_rater), 2):
            a, b = by_rater[first], by_rater[second]  # same items, same order
            for scale in (0, 1):
                x, y = ratings.scores[a, scale], ratings.scores[b, scale]
                if np.ptp(x) > 0 and np.ptp(y) > 0:
                    values[scale].append(float(spearmanr(x, y).statistic))
    return float(np.mean(values[0])), float(np.mean(values[1]))
