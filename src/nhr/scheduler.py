"""Budget-aware job sampling (docs/method.md §1, stage 4).

Every (source, instruction, editor seed) is a job. Jobs are drawn uniformly at random without
replacement until the budget is spent. The draw is stateless: each job gets a priority
u = hash(run seed, job id) in [0, 1) and jobs are taken in increasing u. Sorting by i.i.d.
uniform keys is a uniformly random permutation, so any prefix is a uniform sample without
replacement; and because u depends only on the job, the draw is the same on every machine
and after every restart.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from nhr.config import BudgetSection
from nhr.records import OK

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


# -- adaptive rounds (schedule.policy: adaptive) ------------------------------------------------
# Round r gives each pair still open its next seed; the jobs of a round are drawn like the
# uniform schedule's (increasing priority, under the budget left), so each round is a uniform
# sample of the jobs it offers. What a pair needs next is read from the cumulative job and
# validation tables of the round before: the tables are the state, so a resumed run decides
# exactly as an uninterrupted one.

# Pseudo-attempts of the pooled pass rate mixed into each operation's measured yield, so an
# operation with few attempts so far is neither starved nor flooded.
PRIOR_ATTEMPTS = 5.0


@dataclass
class PairState:
    """What the rounds so far did for one (source, instruction) pair."""

    operation: str
    attempts: int = 0  # jobs scheduled (edited)
    over_budget: bool = False  # a job of it did not fit the budget: the pair is closed
    passed: bool = False  # some candidate passed the validator
    clearance: float = -math.inf  # best passing candidate: least score above its threshold

    def open(self, max_attempts: int, margin: float) -> bool:
        """Gets another seed: not closed, seeds left, and no pass clearing the margin."""
        if self.over_budget or self.attempts >= max_attempts:
            return False
        return not self.passed or self.clearance < margin


def pair_states(
    jobs: list[dict[str, Any]],
    validations: list[dict[str, Any]],
    thresholds: Callable[[str], tuple[float, float]],
) -> dict[tuple[str, str], PairState]:
    """Per (source_id, edit_id): its state after the rounds whose rows are given (one shard's
    cumulative schedule and validate tables). `thresholds(operation)` is validate's pair."""
    states: dict[tuple[str, str], PairState] = {}
    pair_of: dict[str, tuple[str, str]] = {}
    for job in jobs:
        key = (job["source_id"], job["edit_id"])
        state = states.setdefault(key, PairState(job["operation"]))
        if job["status"] == OK:
            state.attempts += 1
            pair_of[job["job_id"]] = key
        else:
            state.over_budget = True
    for row in validations:
        key = pair_of.get(row["candidate_id"])
        if key is None or row["status"] != OK:
            continue
        state = states[key]
        min_adherence, min_aesthetics = thresholds(state.operation)
        clearance = min(row["adherence"] - min_adherence, row["aesthetics"] - min_aesthetics)
        state.passed = True
        state.clearance = max(state.clearance, clearance)
    return states


def mix_shares(
    target: dict[str, float], attempts: dict[str, int], passed: dict[str, int]
) -> dict[str, float]:
    """Share of the new-pair budget per operation so that released triplets land on `target`.

    An operation's yield is its pairs passed per editor call so far; one released triplet of
    it costs 1 / yield calls, so spending in proportion to target / yield releases in
    proportion to target. Yields are shrunk toward the pooled rate (PRIOR_ATTEMPTS), which
    before any measurement makes the shares the target itself."""
    pooled = (sum(passed.values()) + 1) / (sum(attempts.values()) + 2)
    weights = {}
    for operation, share in target.items():
        observed = passed.get(operation, 0) + PRIOR_ATTEMPTS * pooled
        rate = observed / (attempts.get(operation, 0) + PRIOR_ATTEMPTS)
        weights[operation] = share / rate if share > 0 else 0.0
    total = sum(weights.values())
    return {op: (w / total if total else 0.0) for op, w in weights.items()}


def mix_table(target: dict[str, float], released: dict[str, int]) -> list[dict[str, Any]]:
    """Target vs achieved share of released triplets, per operation of the target (and any
    other operation that was released)."""
    total = sum(released.values())
    return [
        {
            "operation": operation,
            "target": target.get(operation, 0.0),
            "achieved": released.get(operation, 0) / total if total else None,
            "released": released.get(operation, 0),
        }
        for operation in list(target)
        + sorted(o for o, n in released.items() if n and o not in target)
    ]


def depth_yields(
    jobs: list[dict[str, Any]], validations: list[dict[str, Any]]
) -> tuple[Counter[tuple[str, int]], Counter[tuple[str, int]]]:
    """(jobs, passes) per (operation, seed index) in one shard's cumulative tables: how often
    an operation's k-th seed of a pair passed."""
    passed = {row["candidate_id"] for row in validations if row["status"] == OK}
    counts: Counter[tuple[str, int]] = Counter()
    passes: Counter[tuple[str, int]] = Counter()
    for job in jobs:
        if job["status"] == OK:
            key = (job["operation"], job["seed_index"])
            counts[key] += 1
            passes[key] += job["job_id"] in passed
    return counts, passes


def low_yield(
    counts: Counter[tuple[str, int]], passes: Counter[tuple[str, int]], min_yield: float
) -> frozenset[tuple[str, int]]:
    """(operation, seed index) whose jobs are not worth running: the operation's pass rate at
    the seed before is below `min_yield` (shrunk toward that seed's pooled rate, so a handful
    of jobs decides nothing on its own). Rates fall from one seed to the next (the easy pairs
    have left), so the seed before is the optimistic estimate."""
    if min_yield <= 0:
        return frozenset()
    stopped = set()
    for depth in {d for _, d in counts}:
        total = sum(n for (_, d), n in counts.items() if d == depth)
        pooled = sum(p for (_, d), p in passes.items() if d == depth) / total
        for (operation, d), n in counts.items():
            if d == depth:
                rate = (passes[(operation, d)] + PRIOR_ATTEMPTS * pooled) / (n + PRIOR_ATTEMPTS)
                if rate < min_yield:
                    stopped.add((operation, depth + 1))
    return frozenset(stopped)


def target_mix_report(config: Any, categories: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """brief.target_mix against the forward triplets selected per operation (the scheduler's
    unit; `categories` as nhr.analysis.report.category_yield gives them), or None without one."""
    target = config.brief.target_mix
    if target is None:
        return None
    return mix_table(target, {row["operation"]: row["forward"] or 0 for row in categories})
