import numpy as np
import pytest

from nhr.analysis.thresholds import find_knees, grid, survival_curve


def reference_like_pool(size=20000, seed=0):
    """Scores whose S(T) is shaped like the reference run: a gentle decline up to ~4.3, then a
    cliff with knees at 4.5 (-62 %) and 4.9 (-84 %)."""
    t = grid()
    s = np.clip(1.0 - 0.08 * (t - 1.0), 0, 1)  # gentle decline
    s[t >= 4.4] *= 0.9
    s[t >= 4.5] *= 0.379  # -62.1 % at 4.5
    s[t >= 4.6] *= 0.85
    s[t >= 4.7] *= 0.85
    s[t >= 4.8] *= 0.85
    s[t >= 4.9] *= 0.16  # -84 % at 4.9
    s[t >= 5.0] *= 0.5
    # Turn the target curve into scores: P(min score >= T) = s(T).
    rng = np.random.default_rng(seed)
    u = rng.random(size)
    lows = np.array([t[np.searchsorted(-s, -x, side="right") - 1] if x <= s[0] else 1.0 for x in u])
    other = np.minimum(5.0, lows + rng.random(size) * 0.5)
    return lows, other


def test_knee_midpoint_on_a_reference_shaped_curve():
    adherence, aesthetics = reference_like_pool()
    t = grid()
    s = survival_curve(adherence, aesthetics, t)
    knees = find_knees(t, s, len(adherence))
    assert knees is not None
    assert knees.first == pytest.approx(4.5) and knees.second == pytest.approx(4.9)
    assert knees.suggested == pytest.approx(4.7, abs=0.05)
    assert knees.first_change == pytest.approx(-0.621, abs=0.05)


def test_survival_curve_counts_both_scores():
    s = survival_curve(
        np.array([5.0, 4.7, 3.0]), np.array([4.8, 5.0, 5.0]), np.array([1.0, 4.7, 4.8, 5.0])
    )
    assert list(s) == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])


def test_a_flat_or_tiny_pool_has_no_knees():
    t = grid()
    assert find_knees(t, survival_curve(np.array([5.0]), np.array([5.0]), t), 1) is None
    assert find_knees(t, np.ones(len(t)), 1000) is None  # no cliff, no suggestion
