"""Which candidates of a run get rated, and simulated raters for simulator runs.

The sample is stratified over validator-score buckets and categories: the paper's human-rated
set (arXiv 2507.14119) was deliberately spread over the whole quality range (bimodal), so that
calibration sees bad, middling and good edits alike, not just what the validator passed. The
buckets cut the lower of a candidate's two validator scores (the keep-rule needs both);
candidates the validator never saw (dropped by the pre-filter) use the pre-filter's scores,
which come from the validator's own prompt. Those make up most of a run's candidates, so a
sample meant to calibrate the validator on its stored scores can keep to the candidates it
scored (`validated_only`). The sample depends only on the run, the seed and that choice.
"""

from __future__ import annotations

import random
from typing import Any

from nhr.labels import LABELS_FOLDER, write_labels

BUCKET_EDGES = (2.0, 3.0, 4.0, 4.5)  # on min(adherence, aesthetics), 1-5
UNSCORED = "unscored"
SIMULATED_KEY = f"{LABELS_FOLDER}/simulated.parquet"


def bucket_of(adherence: float | None, aesthetics: float | None) -> str:
    if adherence is None or aesthetics is None:
        return UNSCORED
    low = min(adherence, aesthetics)
    lower = 1.0
    for edge in BUCKET_EDGES:
        if low < edge:
            return f"{lower:g}-{edge:g}"
        lower = edge
    return f"{lower:g}-5"


def candidates(store: Any, validated_only: bool = False) -> list[dict[str, Any]]:
    """Every edited candidate of a run (with `validated_only`: those the validator scored),
    with its images (digests), instruction, category and the judge scores it got: {item,
    source_image, edited_image, instruction, category, operation, adherence, aesthetics,
    bucket}, in candidate-id order."""
    from nhr import taxonomy

    def rows(stage: str) -> list[dict[str, Any]]:
        return [row for shard in store.done_shards(stage) for row in store.read_rows(stage, shard)]

    scores: dict[str, tuple[float, float]] = {}
    validated: set[str] = set()
    for stage in ("prefilter", "validate"):  # the validator's scores win
        for row in rows(stage):
            if row.get("adherence") is not None and row.get("aesthetics") is not None:
                scores[row["candidate_id"]] = (row["adherence"], row["aesthetics"])
                if stage == "validate":
                    validated.add(row["candidate_id"])
    found = []
    for row in rows("edit"):
        if row["status"] != "ok" or not row.get("edited_image"):
            continue
        if validated_only and row["candidate_id"] not in validated:
            continue
        operation = row["operation"]
        try:
            category = taxonomy.get(operation).label
        except (KeyError, ValueError):
            category = operation
        adherence, aesthetics = scores.get(row["candidate_id"], (None, None))
        found.append(
            {
                "item": row["candidate_id"],
                "source_image": row["source_image"],
                "edited_image": row["edited_image"],
                "instruction": row["instruction"],
                "category": category,
                "operation": operation,
                "adherence": adherence,
                "aesthetics": aesthetics,
                "bucket": bucket_of(adherence, aesthetics),
            }
        )
    return sorted(found, key=lambda c: c["item"])


def stratified_sample(
    items: list[dict[str, Any]], count: int, seed: int = 0
) -> list[dict[str, Any]]:
    """`count` items spread evenly over buckets, and within a bucket over categories.

    Round robin: each pass takes one item from every bucket that has any left, each bucket
    cycling through the categories it has, in one seeded order of all categories, from its
    own place in it: bucket i of B starts i/B of the way along, so a small sample covers as
    many categories as it can (started alike, every bucket gave the same first few). A
    stratum's items come in a seeded random order. The result is in drawing order (so a
    rater who stops early has rated a balanced prefix)."""
    generator = random.Random(seed)
    strata: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for item in items:
        strata.setdefault(item["bucket"], {}).setdefault(item["category"], []).append(item)
    for bucket in sorted(strata):
        for category in sorted(strata[bucket]):
            generator.shuffle(strata[bucket][category])
    cycle = sorted({item["category"] for item in items})
    generator.shuffle(cycle)
    buckets = sorted(strata)
    turn = {bucket: i * len(cycle) // len(buckets) for i, bucket in enumerate(buckets)}
    chosen: list[dict[str, Any]] = []
    while len(chosen) < count and any(any(c.values()) for c in strata.values()):
        for bucket in buckets:
            if len(chosen) >= count:
                break
            for step in range(len(cycle)):  # the bucket's next category that has items left
                members = strata[bucket].get(cycle[(turn[bucket] + step) % len(cycle)])
                if members:
                    chosen.append(members.pop())
                    turn[bucket] += step + 1
                    break
    return chosen


def run_sample(
    store: Any, count: int, seed: int = 0, validated_only: bool = False
) -> list[dict[str, Any]]:
    """The stratified sample of a run's candidates (see module docstring)."""
    return stratified_sample(candidates(store, validated_only), count, seed)


class NotASimulatorRun(ValueError):
    pass


def simulated_labels(
    store: Any, sample: list[dict[str, Any]], raters: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Label rows from `raters` simulated raters per item (nhr.backends.sim.raters), each
    rating the simulator's true scores of the triplet with a personal bias and noise."""
    import numpy as np

    from nhr.backends.sim.raters import RaterPool, rate
    from nhr.backends.sim.truth import true_scores

    truth = []
    for item in sample:
        try:
            truth.append(
                true_scores(
                    store.images.get(item["source_image"]),
                    store.images.get(item["edited_image"]),
                    item["instruction"],
                )
            )
        except ValueError as error:
            raise NotASimulatorRun(
                f"{store.where()}: --simulate-raters needs a run mined with the simulator "
                f"backend ({error})"
            ) from None
    pool = RaterPool(raters=max(RaterPool().raters, raters), per_item=(raters, raters))
    ratings = rate(np.array(truth, dtype=float).reshape(-1, 2), pool, seed=seed)
    width = len(str(pool.raters))
    return [
        {
            "item": sample[item]["item"],
            "instruction": sample[item]["instruction"],
            "category": sample[item]["category"],
            "rater": f"sim-rater-{int(rater) + 1:0{width}d}",
            "instruction_score": float(scores[0]),
            "aesthetics_score": float(scores[1]),
        }
        for item, rater, scores in zip(ratings.item, ratings.rater, ratings.scores)
    ]


def write_simulated(
    store: Any, sample: list[dict[str, Any]], raters: int, seed: int = 0
) -> tuple[str, int, int]:
    """Rate a sample with simulated raters, write RUN/labels/simulated.parquet (whole,
    atomic). Returns (where, items, rows)."""
    rows = simulated_labels(store, sample, raters, seed)
    write_labels(store.storage, SIMULATED_KEY, rows)
    return str(store.where(SIMULATED_KEY)), len(sample), len(rows)
