"""Budget-aware job sampling (NHR-METHOD §1 stage 4).

Every (source, instruction, editor seed) is a job. Jobs are drawn uniformly at random without
replacement until the budget is spent. The draw is stateless: each job gets a priority
u = hash(run seed, job id) in [0, 1) and jobs are taken in increasing u. Sorting by i.i.d.
uniform keys is a uniformly random permutation, so any prefix is a uniform sample without
replacement; and because u depends only on the job, the draw is the same on every machine
and after every restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from nhr.config import BudgetSection

# The draw in two passes over the shards, for runs too large to hold in one process: the
# first pass counts jobs per priority bucket (a histogram whose size does not depend on the
# run), the driver then finds the last job taken (the cutoff) reading only the jobs of the
# buckets it needs, a group of buckets at a time, and the second pass marks each shard's jobs
# against the cutoff. The result is exactly `draw_jobs`' (same order, same float sums).
BUCKETS = 1 << 16
# Jobs the cutoff search holds at once (32 bytes each, twice that while sorting: ~64 MiB at
# most): a cost budget is summed in priority order a group of buckets at a time, one pass
# over the shards per group of about this many jobs.
GROUP_JOBS = 1 << 20
# One job's place in the draw: jobs are taken in increasing (priority, job id), and equal keys
# keep the order of the shards and of the jobs in them, as the stable sort of `draw_jobs`.
KEY = np.dtype(
    [("priority", "f8"), ("job", "u8"), ("shard", "u4"), ("index", "u4"), ("cost", "f8")]
)
ORDER = ["priority", "job", "shard", "index"]


@dataclass(frozen=True)
class BudgetDecision:
    scheduled: bool
    spent: float


def job_cost(budget: BudgetSection, width: int, height: int) -> float:
    return budget.cost_per_edit + budget.cost_per_megapixel * width * height / 1e6


def draw_jobs(jobs: list[dict[str, Any]], budget: BudgetSection) -> tuple[list[bool], float]:
    """Which jobs (each with `priority` and `cost`) fit the budget, and the budget spent.

    Jobs are considered in increasing priority; the draw stops at the first job that no longer
    fits, as a sequential draw would.
    """
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i]["priority"], jobs[i]["job_id"]))
    chosen = [False] * len(jobs)
    spent = 0.0
    count = 0
    for index in order:
        cost = jobs[index]["cost"]
        if budget.edits is not None and count >= budget.edits:
            break
        if budget.cost is not None and spent + cost > budget.cost + 1e-9:
            break
        chosen[index] = True
        spent += cost
        count += 1
    return chosen, spent


@dataclass(frozen=True)
class Cutoff:
    """The last job the draw takes, as its key (priority, job id as an int, shard, index in
    the shard); a job is scheduled iff its key is <= `last`. None: no job is."""

    last: tuple[float, int, int, int] | None

    def takes(self, key: tuple[float, int, int, int]) -> bool:
        return self.last is not None and key <= self.last


TAKE_ALL = Cutoff((math.inf, 0, 0, 0))


def job_key(priority: float, job_id: str, shard: int, index: int) -> tuple[float, int, int, int]:
    return (priority, int(job_id, 16), shard, index)


def bucket_of(priorities: np.ndarray) -> np.ndarray:
    """The histogram bucket of each priority (monotone in priority; u may round to 1.0)."""
    return np.minimum((priorities * BUCKETS).astype(np.int64), BUCKETS - 1)


def histogram(priorities: np.ndarray) -> np.ndarray:
    return np.bincount(bucket_of(priorities), minlength=BUCKETS).astype(np.int64)


def find_cutoff(
    counts: np.ndarray,
    jobs_in: Callable[[int, int], np.ndarray],
    budget: BudgetSection,
    group_jobs: int = GROUP_JOBS,
) -> Cutoff:
    """The cutoff of `draw_jobs` over a run whose jobs per priority bucket are `counts`.

    `jobs_in(lo, hi)` returns the KEY records of every job whose bucket is in [lo, hi) (one
    pass over the shards). A count budget alone needs only the bucket of its last job; a cost
    budget sums costs in priority order from the first job, as `draw_jobs` does, group by group.
    """
    total = int(counts.sum())
    if budget.cost is None:
        take = total if budget.edits is None else min(budget.edits, total)
        if take == total:
            return TAKE_ALL
        if take == 0:
            return Cutoff(None)
        cumulative = np.cumsum(counts)
        bucket = int(np.searchsorted(cumulative, take))  # the bucket of the take-th job
        before = int(cumulative[bucket] - counts[bucket])
        jobs = np.sort(jobs_in(bucket, bucket + 1), order=ORDER)
        return Cutoff(_key(jobs[take - before - 1]))
    spent = 0.0
    count = 0
    last = None
    for lo, hi in _groups(counts, group_jobs):
        jobs = np.sort(jobs_in(lo, hi), order=ORDER)
        for index, cost in enumerate(jobs["cost"].tolist()):
            if budget.edits is not None and count >= budget.edits:
                return Cutoff(_key(jobs[index - 1]) if index else last)
            if spent + cost > budget.cost + 1e-9:
                return Cutoff(_key(jobs[index - 1]) if index else last)
            spent += cost
            count += 1
        last = _key(jobs[-1])
    return TAKE_ALL


def _key(record: np.void) -> tuple[float, int, int, int]:
    return (
        float(record["priority"]),
        int(record["job"]),
        int(record["shard"]),
        int(record["index"]),
    )


def _groups(counts: np.ndarray, group_jobs: int) -> Iterator[tuple[int, int]]:
    """Consecutive bucket ranges [lo, hi) of about `group_jobs` jobs each (none empty)."""
    lo = 0
    held = 0
    for bucket, count in enumerate(counts.tolist()):
        held += count
        if held >= group_jobs:
            yield lo, bucket + 1
            lo, held = bucket + 1, 0
    if held:
        yield lo, len(counts)
