"""`nhr calibrate`: how good is a judge, measured against human (or simulated) ratings.

The NHR paper (arXiv 2507.14119) measured its validator on human-rated triplets: rater-bias
corrected labels, MAE and Spearman rho per scale, precision and recall of the keep-rule
"both scores >= T" against the positive label "both human scores > 4.0", per score bucket and
per category (its Table 1, Tables B.1-B.2 and Figures B.3-B.5). This module computes those
figures for any judge:

- the judges a run already asked (`--run RUN`: the validator's and the pre-filter's stored
  scores of the labelled candidates), or
- any judge config (`--judge CONFIG --role validator`): the labelled items are scored again
  through the validate stage's own requests and parser (nhr.stages.validate.judge_scores).

Every figure has a seeded bootstrap 95 % interval (items resampled with replacement), so the
same labels and seed give the same report. A judge on another scale (validate.judge: 0-10,
0-25, unbounded rewards) is measured on its own scale: its thresholds and precision-recall
curve are on that scale, and for MAE and the confusion matrix a bounded scale is mapped
linearly onto the raters' 1-5 (an unbounded one has no MAE: only ranks compare).

Per-category thresholds: for each category, the lowest threshold (one value for both scales,
on a grid of the judge's scale) whose precision on the labelled items reaches the target, with
at least `min_kept` items kept; written as a `validate.thresholds` config snippet. A category
that reaches the target at no threshold is never loosened but may be tightened: it gets the
threshold where its precision is surely best (the highest Wilson lower bound), not below the
global pair; or with `exclude_unreachable` it is written `{exclude: true}` (validate drops it:
`category_excluded`).
With `confidence`, precision is read through its Wilson interval (chosen where the lower bound
reaches the target, excluded only where the upper bound never does).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

POSITIVE_ABOVE = 4.0  # the paper's positive label: both human scores > 4.0
SCALES = ("instruction", "aesthetics")
BUCKETS = ((1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.0))  # true-score buckets (last closed)
EPSILON = 1e-6  # 4.7 stored as 4.699999 still passes 4.7
MIN_KEPT = 25  # fewest kept items a category's precision is measured on


@dataclass(frozen=True)
class JudgeScale:
    """The range of a judge's scores; None: unbounded on that side."""

    low: float | None = 1.0
    high: float | None = 5.0

    @property
    def bounded(self) -> bool:
        return self.low is not None and self.high is not None

    def to_label_scale(self, scores: np.ndarray) -> np.ndarray | None:
        """Scores mapped linearly onto the raters' 1-5 (None for an unbounded scale)."""
        if not self.bounded:
            return None
        return 1.0 + (np.asarray(scores, dtype=float) - self.low) * 4.0 / (self.high - self.low)

    def grid(self, observed: np.ndarray, steps: int = 80) -> np.ndarray:
        """Thresholds to try: `steps` even steps over a bounded scale (0.05 on 1-5, so 4.7 is
        on it); the observed scores' quantiles for an unbounded one."""
        if self.bounded:
            return np.round(np.linspace(self.low, self.high, steps + 1), 6)
        finite = np.asarray(observed, dtype=float).ravel()
        return np.unique(np.quantile(finite, np.linspace(0, 1, steps + 1))) if finite.size else []


@dataclass
class Judge:
    """One judge's readings of the labelled items, and the rule it is held to."""

    name: str
    scores: dict[str, tuple[float, float]]  # item -> (adherence, aesthetics), judge's scale
    threshold: tuple[float, float]
    scale: JudgeScale = JudgeScale()
    per_category: dict[str, tuple[float, float]] | None = None  # validate.thresholds
    failed: int = 0  # items the judge could not score


# --- statistics --------------------------------------------------------------------------------


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair of (B, n) arrays; nan where a row is constant."""
    rx, ry = _ranks(x), _ranks(y)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (rx * ry).sum(-1) / denominator, np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2:
        return math.nan
    return float(_spearman_rows(np.asarray(x, float)[None], np.asarray(y, float)[None])[0])


def _interval(samples: np.ndarray) -> list[float | None]:
    finite = samples[np.isfinite(samples)]
    if finite.size < max(10, samples.size // 2):  # mostly undefined: no honest interval
        return [None, None]
    low, high = np.percentile(finite, [2.5, 97.5])
    return [float(low), float(high)]


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _figure(value: float, samples: np.ndarray) -> tuple[float | None, list[float | None]]:
    low, high = _interval(samples)
    return _number(value), [_number(low), _number(high)]


def _classify(
    seen: np.ndarray, positive: np.ndarray, thresholds: np.ndarray
) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and accuracy of "both scores >= the item's thresholds", along the
    leading axes of `seen` (..., n, 2) / `positive` (..., n)."""
    kept = (seen >= thresholds - EPSILON).all(axis=-1)
    true_positive = (kept & positive).sum(-1).astype(float)
    kept_count = kept.sum(-1)
    positives = positive.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(kept_count > 0, true_positive / kept_count, np.nan)
        recall = np.where(positives > 0, true_positive / positives, np.nan)
        f1 = 2 * precision * recall / (precision + recall)
    accuracy = (kept == positive).mean(-1)
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}


def _bucket_of(values: np.ndarray) -> np.ndarray:
    edges = np.array([b[0] for b in BUCKETS[1:]])
    return np.searchsorted(edges, np.clip(values, 1.0, 5.0), side="right")


def _bucket_names() -> list[str]:
    return [f"{low:g}-{high:g}" for low, high in BUCKETS]


# --- one judge ---------------------------------------------------------------------------------


def judge_figures(
    judge: Judge,
    truth: dict[str, tuple[float, float]],
    categories: dict[str, str | None],
    *,
    positive_above: float = POSITIVE_ABOVE,
    target_precision: float | None = 0.9,
    min_kept: int = MIN_KEPT,
    rounds: int = 1000,
    seed: int = 0,
    exclude_unreachable: bool = False,
    confidence: float | None = None,
) -> dict[str, Any]:
    """Every figure of one judge against the ground truth, with bootstrap 95 % intervals."""
    items = sorted(set(judge.scores) & set(truth))
    n = len(items)
    result: dict[str, Any] = {
        "n": n,
        "unscored": len(set(truth) - set(judge.scores)),
        "failed": judge.failed,
        "scale": {"low": judge.scale.low, "high": judge.scale.high},
        "threshold": {"adherence": judge.threshold[0], "aesthetics": judge.threshold[1]},
    }
    if n < 2:
        return result
    true = np.array([truth[i] for i in items], dtype=float)
    seen = np.array([judge.scores[i] for i in items], dtype=float)
    names = [categories.get(i) or "unknown" for i in items]
    positive = (true > positive_above).all(axis=1)
    mapped = judge.scale.to_label_scale(seen)
    sample = np.random.default_rng(seed).integers(0, n, size=(rounds, n))

    for axis, scale in enumerate(SCALES):
        entry: dict[str, Any] = {}
        if mapped is not None:
            error = np.abs(mapped[:, axis] - true[:, axis])
            entry["mae"], entry["mae_ci"] = _figure(error.mean(), error[sample].mean(axis=1))
        else:
            entry["mae"], entry["mae_ci"] = None, [None, None]
        rho = spearman(seen[:, axis], true[:, axis])
        boot = _spearman_rows(seen[sample, axis], true[sample, axis])
        entry["spearman"], entry["spearman_ci"] = _figure(rho, boot)
        result[scale] = entry

    # the keep-rule the judge is used with: per category where configured, else the global pair
    rule = np.array([_pair(judge, name) for name in names], dtype=float)
    point = _classify(seen, positive, rule)
    boot = _classify(seen[sample], positive[sample], rule[sample])
    at_threshold: dict[str, Any] = {}
    for key in ("precision", "recall", "f1", "accuracy"):
        at_threshold[key], at_threshold[f"{key}_ci"] = _figure(float(point[key]), boot[key])
    kept = (seen >= rule - EPSILON).all(axis=1)
    at_threshold.update(kept=int(kept.sum()), positives=int(positive.sum()))
    result["at_threshold"] = at_threshold

    result["mae_by_bucket"] = _mae_by_bucket(true, mapped, sample)
    result["confusion"] = _confusion(true, mapped)
    result["pr_curve"] = _pr_curve(seen, positive, judge.scale.grid(seen))
    result["by_category"] = _by_category(seen, true, positive, names, judge, rounds, seed)
    if target_precision is not None:
        result["category_thresholds"] = category_thresholds(
            seen,
            positive,
            names,
            judge.scale,
            target_precision,
            min_kept,
            judge.threshold,
            exclude_unreachable=exclude_unreachable,
            confidence=confidence,
        )
    return result


def _pair(judge: Judge, category: str) -> tuple[float, float]:
    return (judge.per_category or {}).get(category, judge.threshold)


def _mae_by_bucket(true, mapped, sample) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for axis, scale in enumerate(SCALES):
        buckets = _bucket_of(true[:, axis])
        per: dict[str, Any] = {}
        for index, name in enumerate(_bucket_names()):
            inside = buckets == index
            entry: dict[str, Any] = {"n": int(inside.sum())}
            if mapped is None or not inside.any():
                entry.update(mae=None, mae_ci=[None, None])
            else:
                error = np.abs(mapped[:, axis] - true[:, axis])
                weights = inside[sample]
                with np.errstate(invalid="ignore", divide="ignore"):
                    boot = (error[sample] * weights).sum(1) / weights.sum(1)
                entry["mae"], entry["mae_ci"] = _figure(error[inside].mean(), boot)
            per[name] = entry
        out[scale] = per
    return out


def _confusion(true, mapped) -> dict[str, Any]:
    """Rows: true-score bucket; columns: the judge's bucket (on 1-5); per scale."""
    if mapped is None:
        return {}
    out: dict[str, Any] = {"buckets": _bucket_names()}
    for axis, scale in enumerate(SCALES):
        matrix = np.zeros((len(BUCKETS), len(BUCKETS)), dtype=int)
        np.add.at(matrix, (_bucket_of(true[:, axis]), _bucket_of(mapped[:, axis])), 1)
        out[scale] = matrix.tolist()
    return out


def _pr_curve(seen, positive, grid) -> list[dict[str, Any]]:
    rows = []
    for threshold in grid:
        figures = _classify(seen, positive, np.array([threshold, threshold]))
        kept = int((seen >= threshold - EPSILON).all(axis=1).sum())
        rows.append(
            {
                "threshold": _number(threshold),
                "precision": _number(float(figures["precision"])),
                "recall": _number(float(figures["recall"])),
                "kept": kept,
            }
        )
    return rows


def _by_category(seen, true, positive, names, judge, rounds, seed) -> dict[str, Any]:
    out: dict[str, Any] = {}
    labels = np.array(names)
    for name in sorted(set(names)):
        inside = labels == name
        entry: dict[str, Any] = {"n": int(inside.sum())}
        indices = np.flatnonzero(inside)
        # resample within the category, so every round has its items
        local = np.random.default_rng([seed, len(indices)]).integers(
            0, len(indices), size=(rounds, len(indices))
        )
        picked = indices[local]
        for axis, scale in enumerate(SCALES):
            rho = spearman(seen[indices, axis], true[indices, axis])
            boot = _spearman_rows(seen[picked, axis], true[picked, axis])
            entry[f"{scale}_spearman"], entry[f"{scale}_spearman_ci"] = _figure(rho, boot)
        pair = np.array(_pair(judge, name))
        figures = _classify(seen[indices], positive[indices], pair)
        entry["precision"] = _number(float(figures["precision"]))
        entry["recall"] = _number(float(figures["recall"]))
        out[name] = entry
    return out


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion hits / n (z = 1.96: 95 %)."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return (centre - spread) / scale, (centre + spread) / scale


def category_thresholds(
    seen: np.ndarray,
    positive: np.ndarray,
    names: list[str],
    scale: JudgeScale,
    target: float,
    min_kept: int = MIN_KEPT,
    floor: tuple[float, float] | None = None,
    *,
    exclude_unreachable: bool = False,
    confidence: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Per category: the lowest threshold (both scales) whose precision reaches `target` with
    at least `min_kept` items kept (`reached: true`; it may be below the global pair: the
    category is that reliable). A category that never reaches it is never loosened but may be
    tightened: it gets the threshold where its precision is surely best, the highest lower
    bound of the Wilson interval (95 %, or `confidence`), so a peak on a few items does not
    decide, but not below `floor` (the global pair), and `reached: false`; with
    `exclude_unreachable` it is excluded instead (`exclude: true`: the validate stage drops
    its candidates). Too few items: no entry (the global pair stays).

    `confidence` (e.g. 0.95): precision is judged by its Wilson interval instead of the point
    estimate, so noise in a small category does not decide: a threshold is chosen only where
    the interval's lower bound reaches the target, and a category is excluded only where even
    the upper bound stays below it at every threshold (between the two: not loosened)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2) if confidence else 0.0
    z_best = z or 1.96  # an unreachable category's best threshold: by its lower bound
    out: dict[str, dict[str, Any]] = {}
    labels = np.array(names)
    grid = scale.grid(seen)
    for name in sorted(set(names)):
        inside = labels == name
        # below the lowest labelled reading every threshold keeps the same items: the labels
        # say nothing about what a lower one would let in (e.g. an audit of released items)
        lowest = float(seen[inside].min(axis=1).min())
        below = grid[grid <= lowest + EPSILON]
        start = below.max() if below.size else -math.inf  # the highest keeping them all
        best: tuple[float, float] | None = None  # (precision, threshold)
        surest: tuple[float, float] | None = None  # (Wilson lower bound, threshold)
        chosen = None
        possible = False  # the target is within reach at some threshold
        for threshold in grid[grid >= start]:
            kept = (seen[inside] >= threshold - EPSILON).all(axis=1)
            count = int(kept.sum())
            if count < min_kept:
                break  # higher thresholds keep even fewer
            hits = int(positive[inside][kept].sum())
            precision = hits / count
            low, high = wilson(hits, count, z) if z else (precision, precision)
            if chosen is None and low >= target:
                chosen = float(threshold)
            possible = possible or high >= target
            if best is None or precision > best[0]:
                best = (precision, float(threshold))
            bound = wilson(hits, count, z_best)[0]
            if surest is None or bound > surest[0] + 1e-12:
                surest = (bound, float(threshold))
        if best is None:
            continue
        exclude = chosen is None and exclude_unreachable and not possible
        if chosen is not None:
            pair = (chosen, chosen)
        else:
            tight = surest[1] if surest else best[1]
            low_pair = floor or (tight, tight)
            pair = (max(tight, low_pair[0]), max(tight, low_pair[1]))
        kept = (seen[inside] >= np.array(pair) - EPSILON).all(axis=1)
        hits = int((kept & positive[inside]).sum())
        positives = int(positive[inside].sum())
        out[name] = {
            "adherence": _number(pair[0]),
            "aesthetics": _number(pair[1]),
            "precision": _number(hits / kept.sum()) if kept.any() else None,
            "recall": _number(hits / positives) if positives else None,
            "kept": int(kept.sum()),
            "n": int(inside.sum()),
            "reached": chosen is not None,
            "best_precision": _number(best[0]),
            "exclude": exclude,
        }
        if exclude:  # released: nothing of it
            out[name].update(precision=None, recall=0.0 if positives else None, kept=0)
    return out


def threshold_snippet(thresholds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The `validate.thresholds` config mapping (operation keys only: what validate accepts);
    an excluded category is `{exclude: true}`."""
    from nhr import taxonomy

    return {
        "validate": {
            "thresholds": {
                name: (
                    {"exclude": True}
                    if entry.get("exclude")
                    else {"adherence": entry["adherence"], "aesthetics": entry["aesthetics"]}
                )
                for name, entry in thresholds.items()
                if name in taxonomy.OPERATIONS
            }
        }
    }


# --- raters ------------------------------------------------------------------------------------


def rater_figures(rows: list[dict[str, Any]], min_shared: int = 3) -> dict[str, Any]:
    """Who rated what, each rater's bias, and agreement: the mean Spearman over every pair of
    raters who share at least `min_shared` items (both scores varying), per scale."""
    from nhr.labels import SCORES

    by_rater: dict[str, dict[str, tuple[float, float]]] = {}
    for row in rows:
        by_rater.setdefault(row["rater"], {})[row["item"]] = tuple(row[s] for s in SCORES)
    values: dict[str, list[float]] = {scale: [] for scale in SCALES}
    for first, second in combinations(sorted(by_rater), 2):
        shared = sorted(set(by_rater[first]) & set(by_rater[second]))
        if len(shared) < min_shared:
            continue
        a = np.array([by_rater[first][i] for i in shared])
        b = np.array([by_rater[second][i] for i in shared])
        for axis, scale in enumerate(SCALES):
            rho = spearman(a[:, axis], b[:, axis])
            if math.isfinite(rho):
                values[scale].append(rho)
    items: dict[str, int] = {}
    for row in rows:
        items[row["item"]] = items.get(row["item"], 0) + 1
    counts = list(items.values())
    return {
        "raters": len(by_rater),
        "items": len(items),
        "ratings": len(rows),
        "ratings_per_item": {"min": min(counts, default=0), "max": max(counts, default=0)},
        "agreement": {
            scale: {"spearman": _number(float(np.mean(v))) if v else None, "pairs": len(v)}
            for scale, v in values.items()
        },
        "bias": _rater_bias(rows),
    }


def _rater_bias(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """b_j per rater and scale: mean over the rater's items of (s_ij - item mean)."""
    from nhr.labels import SCORES, plain_means

    means = plain_means(rows)
    deviations: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        mean = means[row["item"]]
        deviations.setdefault(row["rater"], []).append(
            (row[SCORES[0]] - mean[0], row[SCORES[1]] - mean[1])
        )
    return {
        rater: [
            round(float(np.mean([d[0] for d in dev])), 4),
            round(float(np.mean([d[1] for d in dev])), 4),
        ]
        for rater, dev in sorted(deviations.items())
    }


# --- judge configs ----------------------------------------------------------------------------


def load_judge_config(path: str | Path) -> Any:
    """A judge config: any run config, or a short one (configs/judges/) that gives only the
    judge's model roles and `validate`; the roles it leaves out are filled with the simulator
    (they are never called: a judge config only lends one role's model)."""
    import yaml

    from nhr.config import ROLES, ConfigError, parse_config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"judge config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"judge config {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), (dict, str)):
        raise ConfigError(f"judge config {path}: needs a `models` mapping with the judge's role")
    if isinstance(data["models"], dict):
        data["models"] = {role: {"backend": "sim"} for role in ROLES} | data["models"]
    return parse_config(data)


# --- judges of a run, or re-scored -------------------------------------------------------------


def _stage_rows(store: Any, stage: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for shard in store.done_shards(stage):
        rows.extend(store.read_rows(stage, shard))
    return rows


def run_judges(store: Any, items: set[str]) -> tuple[list[Judge], dict[str, str]]:
    """The validator's and the pre-filter's stored scores of the labelled candidates, and each
    candidate's operation."""
    from nhr.config import parse_config

    config = parse_config(store.read_config())
    operations = {
        row["candidate_id"]: row.get("operation")
        for row in _stage_rows(store, "edit")
        if row["candidate_id"] in items
    }
    judges = []
    validate = config.validate_
    global_pair = (validate.adherence_threshold, validate.aesthetics_threshold)
    per_category = {k: validate.pair(k) for k in validate.thresholds}  # excluded: (inf, inf)
    sources = [
        (
            "validator",
            "validate",
            JudgeScale(validate.judge.low, validate.judge.high),
            per_category,
        ),
        ("prefilter", "prefilter", JudgeScale(), None),  # asked with the paper's prompt
    ]
    for name, stage, scale, categories in sources:
        scores, failed = {}, 0
        for row in _stage_rows(store, stage):
            if row["candidate_id"] not in items:
                continue
            if row.get("adherence") is None or row.get("aesthetics") is None:
                failed += row.get("status") == "failed"
                continue
            scores[row["candidate_id"]] = (float(row["adherence"]), float(row["aesthetics"]))
        if scores:
            judges.append(Judge(name, scores, global_pair, scale, categories, failed))
    return judges, operations


def rescored_judge(
    config_path: str | Path,
    role: str,
    rows: list[dict[str, Any]],
    store: Any | None = None,
    labels_location: str | Path = ".",
) -> Judge:
    """The labelled items scored again by `role`'s model of a judge config, through the
    validate stage's requests and parser. Run items (candidate ids) take their images from
    the run (`store`); outside items read `source_image` / `edited_image` (URLs, or paths
    relative to the labels' folder: `labels_location`, the labels file or folder)."""
    import tempfile

    from nhr.calls import Failure
    from nhr.labels import items_of, outside_image_reader
    from nhr.stages.validate import judge_scores
    from nhr.store import ImageStore

    config = load_judge_config(config_path)
    read_outside = outside_image_reader(labels_location)
    first = items_of(rows)
    candidates = {}
    if store is not None:
        candidates = {
            row["candidate_id"]: row
            for row in _stage_rows(store, "edit")
            if row["candidate_id"] in first
        }
    with tempfile.TemporaryDirectory(prefix="nhr-calibrate-") as folder:
        outside = ImageStore(folder)
        items, names, failed = [], [], 0
        for name, row in first.items():
            if name in candidates:
                found = candidates[name]
            else:
                try:
                    pair = [
                        outside.put(read_outside(row[k])) for k in ("source_image", "edited_image")
                    ]
                except (OSError, TypeError):
                    failed += 1
                    continue
                found = {
                    "source_image": pair[0],
                    "edited_image": pair[1],
                    "instruction": row["instruction"],
                }
            items.append({k: found[k] for k in ("source_image", "edited_image", "instruction")})
            names.append(name)
        store_for = _TwoStores(store.images, outside) if store is not None else outside
        results = judge_scores(config, role, store_for, items)
    scores = {}
    for name, result in zip(names, results):
        if isinstance(result, Failure):
            failed += 1
        else:
            scores[name] = (float(result[0]), float(result[1]))
    validate = config.validate_
    return Judge(
        Path(config_path).stem,
        scores,
        (validate.adherence_threshold, validate.aesthetics_threshold),
        JudgeScale(validate.judge.low, validate.judge.high),
        {k: (v.adherence, v.aesthetics) for k, v in validate.thresholds.items()},
        failed,
    )


class _TwoStores:
    """Images of the run, else of the outside items (read-only view for the requests)."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def get(self, digest: str) -> bytes:
        try:
            return self.first.get(digest)
        except Exception:  # noqa: BLE001 - not in the run: an outside image
            return self.second.get(digest)


# --- the report --------------------------------------------------------------------------------


def calibrate(
    rows: list[dict[str, Any]],
    judges: list[Judge],
    categories: dict[str, str | None],
    *,
    positive_above: float = POSITIVE_ABOVE,
    target_precision: float | None = 0.9,
    min_kept: int = MIN_KEPT,
    rounds: int = 1000,
    seed: int = 0,
    exclude_unreachable: bool = False,
    confidence: float | None = None,
) -> dict[str, Any]:
    """calibration.json: {"judges": {NAME: figures}, "raters": {...}, "positive_above", ...}."""
    from nhr.labels import ground_truth

    truth = ground_truth(rows)
    return {
        "items": len(truth),
        "positive_above": positive_above,
        "target_precision": target_precision,
        "min_kept": min_kept,
        "exclude_unreachable": exclude_unreachable,
        "confidence": confidence,
        "bootstrap": {"rounds": rounds, "seed": seed, "level": 0.95},
        "raters": rater_figures(rows),
        "judges": {
            judge.name: judge_figures(
                judge,
                truth,
                categories,
                positive_above=positive_above,
                target_precision=target_precision,
                min_kept=min_kept,
                rounds=rounds,
                seed=seed,
                exclude_unreachable=exclude_unreachable,
                confidence=confidence,
            )
            for judge in judges
        },
    }


def item_categories(
    rows: list[dict[str, Any]], operations: dict[str, str]
) -> dict[str, str | None]:
    """Each item's category: the run's operation of a candidate, else the labels' category."""
    from nhr.labels import items_of

    return {
        item: operations.get(item) or row.get("category") for item, row in items_of(rows).items()
    }


def write_report(storage: Any, report: dict[str, Any]) -> list[str]:
    """calibration.json, calibration.md, one precision-recall PNG per judge and a
    thresholds-<judge>.yaml per judge with per-category thresholds. Returns the keys. The
    per-judge files of an earlier report in the folder that this one does not write are
    removed, so the folder never pairs this JSON with another calibration's snippet."""
    import yaml

    written = ["calibration.json", "calibration.md"]
    storage.write_bytes("calibration.json", json.dumps(report, indent=2).encode("utf-8"))
    storage.write_bytes("calibration.md", render_markdown(report).encode("utf-8"))
    for name, figures in report["judges"].items():
        if figures.get("pr_curve"):
            key = f"pr_curve-{_file_name(name)}.png"
            storage.write_bytes(key, _pr_png(name, figures))
            written.append(key)
        if figures.get("category_thresholds"):
            key = f"thresholds-{_file_name(name)}.yaml"
            snippet = threshold_snippet(figures["category_thresholds"])
            entries = snippet["validate"]["thresholds"]
            excluded = sorted(k for k, v in entries.items() if v.get("exclude"))
            note = ""
            if excluded:
                note = (
                    f"# excluded (precision reaches the target at no threshold): "
                    f"{len(excluded)} of {len(entries)}: {', '.join(excluded)}; their candidates "
                    "are dropped (category_excluded)\n"
                )
            text = (
                f"# per-category thresholds of {name} at precision >= "
                f"{report['target_precision']} (nhr calibrate); merge into the config of a run "
                f"whose validator (models.validator) is {name}'s model\n"
                + note
                + yaml.safe_dump(snippet, sort_keys=True)
            )
            storage.write_bytes(key, text.encode("utf-8"))
            written.append(key)
    for stale in storage.names(""):
        if stale.startswith(("pr_curve-", "thresholds-")) and stale not in written:
            storage.delete(stale)
    return written


def _file_name(judge: str) -> str:
    """A judge's name in a file name ("b/judge" -> "b-judge")."""
    return judge.replace("/", "-")


def _pr_png(name: str, figures: dict[str, Any]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = figures["pr_curve"]
    x = [row["threshold"] for row in curve]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for key in ("precision", "recall"):
        axes.plot(x, [np.nan if row[key] is None else row[key] for row in curve], label=key)
    threshold = figures["threshold"]
    axes.axvline(threshold["adherence"], color="grey", linestyle=":", label="threshold")
    axes.set_xlabel("threshold (both scores >=)")
    axes.set_ylim(0, 1.02)
    axes.set_title(f"{name}: precision and recall vs threshold")
    axes.legend()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _fmt(value: Any, ci: Any = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    if ci and ci[0] is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def thresholds_summary(report: dict[str, Any], name: str) -> str | None:
    """One line on a judge's per-category thresholds at the target precision: how many
    categories got one and where they are written, or why none did. None without a target."""
    figures = report["judges"][name]
    target = report.get("target_precision")
    if target is None or "by_category" not in figures:
        return None
    chosen = figures.get("category_thresholds") or {}
    categories = len(figures["by_category"])
    if not chosen:
        return (
            f"per-category thresholds at {target}: none; no category keeps "
            f"{report.get('min_kept', MIN_KEPT)} scored items (--min-kept) at any threshold, "
            "so the global pair stays: rate more items (--sample) for them"
        )
    reached = sum(1 for c in chosen.values() if c["reached"])
    excluded = sum(1 for c in chosen.values() if c.get("exclude"))
    return (
        f"per-category thresholds at {target}: {len(chosen)} of {categories} categories "
        f"({reached} reach it, {excluded} excluded; the others keep the global pair): "
        f"thresholds-{_file_name(name)}.yaml"
    )


def render_markdown(report: dict[str, Any]) -> str:
    raters = report["raters"]
    lines = [
        "# Judge calibration",
        "",
        f"{report['items']} items rated by {raters['raters']} raters ({raters['ratings']} "
        f"ratings, {raters['ratings_per_item']['min']}-{raters['ratings_per_item']['max']} per "
        "item); ground truth = mean of rater-bias-corrected scores (arXiv 2507.14119). "
        f"Positive: both true scores > {report['positive_above']}. Intervals: bootstrap 95 % "
        f"({report['bootstrap']['rounds']} rounds, seed {report['bootstrap']['seed']}).",
        "",
        "Inter-rater agreement (mean pairwise Spearman): "
        + ", ".join(f"{scale} {_fmt(raters['agreement'][scale]['spearman'])}" for scale in SCALES),
        "",
        "| judge | n | MAE instr | rho instr | MAE aes | rho aes | precision | recall | F1 | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in report["judges"].items():
        if "at_threshold" not in f:
            lines.append(f"| {name} | {f['n']} | too few items | | | | | | | |")
            continue
        t = f["at_threshold"]
        cells = [
            _fmt(f["instruction"]["mae"], f["instruction"]["mae_ci"]),
            _fmt(f["instruction"]["spearman"], f["instruction"]["spearman_ci"]),
            _fmt(f["aesthetics"]["mae"], f["aesthetics"]["mae_ci"]),
            _fmt(f["aesthetics"]["spearman"], f["aesthetics"]["spearman_ci"]),
        ] + [_fmt(t[k], t[f"{k}_ci"]) for k in ("precision", "recall", "f1", "accuracy")]
        lines.append(f"| {name} | {f['n']} | " + " | ".join(cells) + " |")
    for name, f in report["judges"].items():
        if "at_threshold" not in f:
            continue
        lines += [
            "",
            f"## {name}",
            "",
            f"Scale {f['scale']['low']}-{f['scale']['high']}; thresholds "
            f"{f['threshold']['adherence']} / {f['threshold']['aesthetics']}; "
            f"{f['at_threshold']['kept']} kept, {f['at_threshold']['positives']} positives; "
            f"{f['failed']} failed, {f['unscored']} unscored. "
            f"Curve: pr_curve-{name}.png.",
            "",
            "| true bucket | n (instr) | MAE instr | n (aes) | MAE aes |",
            "|---|---|---|---|---|",
        ]
        for bucket in _bucket_names():
            a = f["mae_by_bucket"]["instruction"][bucket]
            b = f["mae_by_bucket"]["aesthetics"][bucket]
            lines.append(
                f"| {bucket} | {a['n']} | {_fmt(a['mae'], a['mae_ci'])} | {b['n']} | "
                f"{_fmt(b['mae'], b['mae_ci'])} |"
            )
        if f["confusion"]:
            lines += ["", "Confusion (instruction; rows true bucket, columns judge bucket):", ""]
            lines.append("| | " + " | ".join(f["confusion"]["buckets"]) + " |")
            lines.append("|---" * (len(BUCKETS) + 1) + "|")
            for bucket, row in zip(f["confusion"]["buckets"], f["confusion"]["instruction"]):
                lines.append(f"| {bucket} | " + " | ".join(str(v) for v in row) + " |")
        lines += [
            "",
            "| category | n | rho instr | rho aes | precision | recall | threshold at target | "
            "precision there |",
            "|---|---|---|---|---|---|---|---|",
        ]
        chosen = f.get("category_thresholds") or {}
        for category, c in f["by_category"].items():
            pick = chosen.get(category)
            where = (
                f"too few kept (< {report.get('min_kept', MIN_KEPT)})"
                if pick is None and report.get("target_precision") is not None
                else "n/a"
                if pick is None
                else "excluded (target unreachable)"
                if pick.get("exclude")
                else f"{pick['adherence']:g}" + ("" if pick["reached"] else " (target not reached)")
            )
            lines.append(
                f"| {category} | {c['n']} | "
                f"{_fmt(c['instruction_spearman'], c['instruction_spearman_ci'])} | "
                f"{_fmt(c['aesthetics_spearman'], c['aesthetics_spearman_ci'])} | "
                f"{_fmt(c['precision'])} | {_fmt(c['recall'])} | {where} | "
                f"{_fmt(None if pick is None else pick['precision'])} |"
            )
    return "\n".join(lines) + "\n"
