"""Stage 4, schedule: turn (plausible source, instruction) pairs into edit jobs.

This is the one barrier between generation and editing: a budget is a global quantity, so
jobs are drawn from the pool of every shard at once (see `nhr.scheduler`). Jobs over budget
are kept as `dropped` rows, so the report can say how much more the pool could give.

The draw takes two passes over the shards, one shard in memory at a time (`plan`, then
`run_shard`): first the cutoff (the last job the budget takes) from a priority histogram and
the few jobs near it, then each shard's jobs marked against it. No step holds the run's jobs.

`schedule.policy: adaptive` runs one `AdaptiveScheduleStage` per round instead (see
nhr.pipeline.round_stages): the same draw over the jobs a round offers, one seed per open pair.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from nhr.config import BudgetSection
from nhr.ids import derive_seed, stable_id, unit_interval
from nhr.records import DROPPED, OK
from nhr.scheduler import (
    BUCKETS,
    KEY,
    TAKE_ALL,
    Cutoff,
    PairState,
    bucket_of,
    depth_yields,
    find_cutoff,
    histogram,
    job_cost,
    job_key,
    low_yield,
    mix_shares,
    pair_states,
)
from nhr.stages.base import ShardInputs, StageContext


def shard_pairs(config, inputs: dict[str, Any]) -> Iterator[tuple[dict, dict, float]]:
    """(source, edit, cost of one job) of every (plausible source, instruction) pair of one
    shard, in table order."""
    prompts = {p["prompt_id"]: p for p in inputs["design"]}
    sources = {s["source_id"]: s for s in inputs["generate"]}
    for gate_row in inputs["plausibility"]:
        if gate_row["status"] != OK:
            continue
        source = sources[gate_row["source_id"]]
        cost = job_cost(config.schedule.budget, source["width"], source["height"])
        for edit in prompts[gate_row["prompt_id"]]["edits"]:
            yield source, edit, cost


def shard_jobs(config, inputs: dict[str, Any]) -> Iterator[tuple[dict, dict, int, str, float]]:
    """(source, edit, seed index, job id, cost) of every job of one shard, in table order."""
    for source, edit, cost in shard_pairs(config, inputs):
        for seed_index in range(config.schedule.seeds_per_pair):
            yield source, edit, seed_index, pair_job_id(source, edit, seed_index), cost


def pair_job_id(source: dict, edit: dict, seed_index: int) -> str:
    return stable_id(source["source_id"], edit["edit_id"], seed_index)


def job_row(
    seed: int,
    source: dict,
    edit: dict,
    seed_index: int,
    job_id: str,
    cost: float,
    keep: bool,
    reason: str = "over_budget",
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "source_id": source["source_id"],
        "prompt_id": source["prompt_id"],
        "edit_id": edit["edit_id"],
        "instruction": edit["instruction"],
        "operation": edit["operation"],
        "composite": edit["composite"],
        "seed_index": seed_index,
        "editor_seed": derive_seed(seed, "edit", job_id),
        "priority": unit_interval(seed, "schedule", job_id),
        "cost": cost,
        "status": OK if keep else DROPPED,
        "reason": None if keep else reason,
    }


def shard_keys(config, inputs: dict[str, Any], shard: int) -> np.ndarray:
    """The draw keys (nhr.scheduler.KEY) of one shard's jobs."""
    return draw_keys(config.run.seed, shard_jobs(config, inputs), shard)


def draw_keys(seed: int, jobs: Any, shard: int) -> np.ndarray:
    """The draw keys of (source, edit, seed index, job id, cost) jobs of one shard, in order."""
    keys = [
        (unit_interval(seed, "schedule", job_id), int(job_id, 16), shard, index, cost)
        for index, (_, _, _, job_id, cost) in enumerate(jobs)
    ]
    return np.array(keys, dtype=KEY)


class ScheduleStage:
    name = "schedule"
    reads = ("design", "generate", "plausibility")
    global_scope = True
    roles: tuple[str, ...] = ()

    def run(self, ctx: StageContext, shards: ShardInputs) -> Iterator[tuple[int, list[dict]]]:
        cutoff = self.plan(ctx, shards)
        for shard, inputs in shards:
            yield shard, self.run_shard(ctx, inputs, shard, cutoff)

    def plan(self, ctx: StageContext, shards: ShardInputs) -> Cutoff:
        """Pass 1: the cutoff of the budget. Counts the jobs per priority bucket, then reads
        only the jobs of the buckets where the budget runs out (see nhr.scheduler)."""
        config = ctx.config
        budget = config.schedule.budget
        if budget.edits is None and budget.cost is None:
            return TAKE_ALL
        counts = np.zeros(BUCKETS, dtype=np.int64)
        for shard, inputs in shards:
            counts += histogram(shard_keys(config, inputs, shard)["priority"])

        def jobs_in(lo: int, hi: int) -> np.ndarray:
            keys = (shard_keys(config, inputs, shard) for shard, inputs in shards)
            return _in_buckets(keys, lo, hi)

        return find_cutoff(counts, jobs_in, budget)

    def run_shard(
        self, ctx: StageContext, inputs: dict[str, Any], shard: int, cutoff: Cutoff
    ) -> list[dict[str, Any]]:
        """Pass 2: one shard's job rows, each scheduled or dropped by the cutoff."""
        config = ctx.config
        seed = config.run.seed
        ctx.stats.rows_in += sum(1 for row in inputs["plausibility"] if row["status"] == OK)
        jobs = []
        for index, (source, edit, seed_index, job_id, cost) in enumerate(
            shard_jobs(config, inputs)
        ):
            priority = unit_interval(seed, "schedule", job_id)
            keep = cutoff.takes(job_key(priority, job_id, shard, index))
            if keep:
                ctx.stats.rows_out += 1
            else:
                ctx.stats.drop("over_budget")
            jobs.append(job_row(seed, source, edit, seed_index, job_id, cost, keep))
        ctx.progress(len(jobs))
        return jobs


# -- schedule.policy: adaptive -----------------------------------------------------------------


@dataclass(frozen=True)
class RoundPlan:
    """What pass 1 of a round decides for every shard."""

    # brief.target_mix: per operation, the cutoff of the not yet started pairs it starts this
    # round (their first seed's key); None: every pair not started is offered (round 1)
    new_pairs: dict[str, Cutoff] | None
    # schedule.min_yield: (operation, seed index) not worth running (nhr.scheduler.low_yield)
    stopped: frozenset[tuple[str, int]]
    draw: Cutoff  # the round's draw under the budget left


def _remaining(budget: BudgetSection, edits: int | None, cost: float | None) -> BudgetSection:
    # model_construct: what is left may be 0, below the minimum a user may configure
    return BudgetSection.model_construct(
        edits=edits,
        cost=cost,
        cost_per_edit=budget.cost_per_edit,
        cost_per_megapixel=budget.cost_per_megapixel,
    )


class AdaptiveScheduleStage:
    """Round `round` of `rounds` (= schedule.seeds_per_pair) of the adaptive schedule.

    Its table is cumulative: the rows of the round before (`previous`: its schedule and
    validate tables) followed by this round's jobs. A round offers the next seed of every pair
    still open (nhr.scheduler.PairState.open) and, in round 1 (or, with brief.target_mix, in
    every round), the first seed of pairs not started yet; the offered jobs are drawn in
    increasing priority under the budget left, as the uniform schedule draws its jobs.

    With brief.target_mix, each round spends on new pairs a 1/(rounds left) part of the budget
    not already claimed by the open pairs, split between operations by nhr.scheduler.mix_shares
    (their measured yields), each taking its not yet started pairs in increasing priority. The
    last round records every pair never started as dropped, so the pool left stays visible.
    """

    global_scope = True
    roles: tuple[str, ...] = ()

    def __init__(
        self, name: str, round_: int, rounds: int, previous: tuple[str, str] | None
    ) -> None:
        self.name = name
        self.round = round_
        self.rounds = rounds
        self.previous = previous
        self.reads = ("design", "generate", "plausibility") + (previous or ())

    def run(self, ctx: StageContext, shards: ShardInputs) -> Iterator[tuple[int, list[dict]]]:
        plan = self.plan(ctx.config, shards)
        for shard, inputs in shards:
            yield shard, self.run_shard(ctx, inputs, shard, plan)

    # -- one shard ---------------------------------------------------------------------------
    def _state(self, config, inputs) -> tuple[list[dict], dict[tuple[str, str], PairState]]:
        if self.previous is None:
            return [], {}
        jobs = inputs[self.previous[0]]
        return jobs, pair_states(jobs, inputs[self.previous[1]], config.validate_.pair)

    def _new_pair_key(self, config, source, edit, shard: int, index: int):
        job_id = pair_job_id(source, edit, 0)
        return job_key(unit_interval(config.run.seed, "schedule", job_id), job_id, shard, index)

    def _offers(
        self, config, inputs, shard: int, states, new_pairs: dict[str, Cutoff] | None, stopped
    ) -> list[tuple[dict, dict, int, str, float]]:
        """(source, edit, seed index, job id, cost) of the jobs this round offers, table order."""
        schedule = config.schedule
        offers = []
        for index, (source, edit, cost) in enumerate(shard_pairs(config, inputs)):
            state = states.get((source["source_id"], edit["edit_id"]))
            if state is not None:
                if not state.open(schedule.seeds_per_pair, schedule.margin):
                    continue
                seed_index = state.attempts
                if (edit["operation"], seed_index) in stopped:
                    continue
                if config.validate_.excluded(edit["operation"]):
                    continue  # can never pass: its first seed was for calibration's scores
            elif new_pairs is None and self.round == 1:
                seed_index = 0
            elif new_pairs is not None and new_pairs.get(edit["operation"], Cutoff(None)).takes(
                self._new_pair_key(config, source, edit, shard, index)
            ):
                seed_index = 0
            else:
                continue
            job_id = pair_job_id(source, edit, seed_index)
            offers.append((source, edit, seed_index, job_id, cost))
        return offers

    def _offer_keys(self, config, inputs, shard: int, new_pairs, stopped) -> np.ndarray:
        _, states = self._state(config, inputs)
        offers = self._offers(config, inputs, shard, states, new_pairs, stopped)
        return draw_keys(config.run.seed, offers, shard)

    # -- pass 1 ------------------------------------------------------------------------------
    def plan(self, config, shards: ShardInputs) -> RoundPlan:
        budget = config.schedule.budget
        target = config.brief.target_mix
        used_edits, used_cost = 0, 0.0
        open_jobs: Counter[tuple[str, int]] = Counter()  # (operation, next seed): count, cost
        open_costs: Counter[tuple[str, int]] = Counter()
        depth_counts: Counter[tuple[str, int]] = Counter()
        depth_passes: Counter[tuple[str, int]] = Counter()
        attempts: Counter[str] = Counter()
        passed: Counter[str] = Counter()
        new_counts: dict[str, np.ndarray] = {}
        for shard, inputs in shards:
            jobs, states = self._state(config, inputs)
            for job in jobs:
                if job["status"] == OK:
                    used_edits += 1
                    used_cost += job["cost"]
            if self.previous is not None:
                counts, passes = depth_yields(jobs, inputs[self.previous[1]])
                depth_counts.update(counts)
                depth_passes.update(passes)
            for state in states.values():
                attempts[state.operation] += state.attempts
                passed[state.operation] += int(state.passed)
            for index, (source, edit, cost) in enumerate(shard_pairs(config, inputs)):
                state = states.get((source["source_id"], edit["edit_id"]))
                if state is None and target is not None:
                    key = self._new_pair_key(config, source, edit, shard, index)
                    counts = new_counts.setdefault(
                        edit["operation"], np.zeros(BUCKETS, dtype=np.int64)
                    )
                    counts[min(int(key[0] * BUCKETS), BUCKETS - 1)] += 1
                elif state is not None and state.open(
                    config.schedule.seeds_per_pair, config.schedule.margin
                ):
                    open_jobs[(edit["operation"], state.attempts)] += 1
                    open_costs[(edit["operation"], state.attempts)] += cost
        stopped = low_yield(depth_counts, depth_passes, config.schedule.min_yield)
        open_edits = sum(n for key, n in open_jobs.items() if key not in stopped)
        open_cost = sum(c for key, c in open_costs.items() if key not in stopped)
        left_edits = None if budget.edits is None else budget.edits - used_edits
        left_cost = None if budget.cost is None else budget.cost - used_cost
        new_pairs = None
        if target is not None:
            rounds_left = self.rounds - self.round + 1
            shares = mix_shares(target, attempts, passed)
            new_pairs = {}
            for operation, counts in new_counts.items():
                share = shares.get(operation, 0.0)
                if share <= 0:
                    continue
                allowed = _remaining(
                    budget,
                    None
                    if left_edits is None
                    else math.floor(max(0, left_edits - open_edits) / rounds_left * share),
                    None
                    if left_cost is None
                    else max(0.0, left_cost - open_cost) / rounds_left * share,
                )
                new_pairs[operation] = find_cutoff(
                    counts, self._new_pairs_in(config, shards, operation), allowed
                )
        if left_edits is None and left_cost is None:
            return RoundPlan(new_pairs, stopped, TAKE_ALL)

        def offer_keys(shard: int, inputs) -> np.ndarray:
            return self._offer_keys(config, inputs, shard, new_pairs, stopped)

        counts = np.zeros(BUCKETS, dtype=np.int64)
        for shard, inputs in shards:
            counts += histogram(offer_keys(shard, inputs)["priority"])

        def jobs_in(lo: int, hi: int) -> np.ndarray:
            return _in_buckets((offer_keys(shard, inputs) for shard, inputs in shards), lo, hi)

        draw = find_cutoff(counts, jobs_in, _remaining(budget, left_edits, left_cost))
        return RoundPlan(new_pairs, stopped, draw)

    def _new_pairs_in(
        self, config, shards: ShardInputs, operation: str
    ) -> Callable[[int, int], np.ndarray]:
        """jobs_in of nhr.scheduler.find_cutoff over the first seeds of the pairs of
        `operation` not started yet."""

        def shard_keys(shard: int, inputs) -> np.ndarray:
            _, states = self._state(config, inputs)
            keys = []
            for index, (source, edit, cost) in enumerate(shard_pairs(config, inputs)):
                if edit["operation"] != operation:
                    continue
                if (source["source_id"], edit["edit_id"]) in states:
                    continue
                keys.append((*self._new_pair_key(config, source, edit, shard, index), cost))
            return np.array(keys, dtype=KEY)

        def jobs_in(lo: int, hi: int) -> np.ndarray:
            return _in_buckets((shard_keys(shard, inputs) for shard, inputs in shards), lo, hi)

        return jobs_in

    # -- pass 2 ------------------------------------------------------------------------------
    def run_shard(
        self, ctx: StageContext, inputs: dict[str, Any], shard: int, plan: RoundPlan
    ) -> list[dict[str, Any]]:
        config = ctx.config
        seed = config.run.seed
        jobs, states = self._state(config, inputs)
        rows = list(jobs)  # the rounds before, unchanged
        offers = self._offers(config, inputs, shard, states, plan.new_pairs, plan.stopped)
        ctx.stats.rows_in += len(offers)
        for index, (source, edit, seed_index, job_id, cost) in enumerate(offers):
            priority = unit_interval(seed, "schedule", job_id)
            keep = plan.draw.takes(job_key(priority, job_id, shard, index))
            if keep:
                ctx.stats.rows_out += 1
            else:
                ctx.stats.drop("over_budget")
            rows.append(job_row(seed, source, edit, seed_index, job_id, cost, keep))
        if self.round == self.rounds and plan.new_pairs is not None:
            offered = {(job[0]["source_id"], job[1]["edit_id"]) for job in offers}
            target = config.brief.target_mix or {}
            for source, edit, cost in shard_pairs(config, inputs):
                key = (source["source_id"], edit["edit_id"])
                if key in states or key in offered:
                    continue
                reason = "over_budget" if target.get(edit["operation"]) else "not_in_target_mix"
                ctx.stats.rows_in += 1
                ctx.stats.drop(reason)
                job_id = pair_job_id(source, edit, 0)
                rows.append(job_row(seed, source, edit, 0, job_id, cost, False, reason))
        ctx.progress(len(offers))
        return rows


def _in_buckets(shard_keys: Iterator[np.ndarray], lo: int, hi: int) -> np.ndarray:
    """The keys whose priority bucket is in [lo, hi), over every shard."""
    parts = []
    for keys in shard_keys:
        buckets = bucket_of(keys["priority"])
        parts.append(keys[(buckets >= lo) & (buckets < hi)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=KEY)
