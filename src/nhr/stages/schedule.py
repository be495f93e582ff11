"""Stage 4, schedule: turn (plausible source, instruction) pairs into edit jobs.

This is the one barrier between generation and editing: a budget is a global quantity, so
jobs are drawn from the pool of every shard at once (see `nhr.scheduler`). Jobs over budget
are kept as `dropped` rows, so the report can say how much more the pool could give.

The draw takes two passes over the shards, one shard in memory at a time (`plan`, then
`run_shard`): first the cutoff (the last job the budget takes) from a priority histogram and
the few jobs near it, then each shard's jobs marked against it. No step holds the run's jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from nhr.ids import derive_seed, stable_id, unit_interval
from nhr.records import DROPPED, OK
from nhr.scheduler import (
    BUCKETS,
    KEY,
    TAKE_ALL,
    Cutoff,
    bucket_of,
    find_cutoff,
    histogram,
    job_cost,
    job_key,
)
from nhr.stages.base import ShardInputs, StageContext


def shard_jobs(config, inputs: dict[str, Any]) -> Iterator[tuple[dict, dict, int, str, float]]:
    """(source, edit, seed index, job id, cost) of every job of one shard, in table order."""
    prompts = {p["prompt_id"]: p for p in inputs["design"]}
    sources = {s["source_id"]: s for s in inputs["generate"]}
    for gate_row in inputs["plausibility"]:
        if gate_row["status"] != OK:
            continue
        source = sources[gate_row["source_id"]]
        cost = job_cost(config.schedule.budget, source["width"], source["height"])
        for edit in prompts[gate_row["prompt_id"]]["edits"]:
            for seed_index in range(config.schedule.seeds_per_pair):
                job_id = stable_id(source["source_id"], edit["edit_id"], seed_index)
                yield source, edit, seed_index, job_id, cost


def shard_keys(config, inputs: dict[str, Any], shard: int) -> np.ndarray:
    """The draw keys (nhr.scheduler.KEY) of one shard's jobs."""
    seed = config.run.seed
    keys = [
        (unit_interval(seed, "schedule", job_id), int(job_id, 16), shard, index, cost)
        for index, (_, _, _, job_id, cost) in enumerate(shard_jobs(config, inputs))
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
            parts = []
            for shard, inputs in shards:
                keys = shard_keys(config, inputs, shard)
                buckets = bucket_of(keys["priority"])
                parts.append(keys[(buckets >= lo) & (buckets < hi)])
            return np.concatenate(parts)

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
            jobs.append(
                {
                    "job_id": job_id,
                    "source_id": source["source_id"],
                    "prompt_id": source["prompt_id"],
                    "edit_id": edit["edit_id"],
                    "instruction": edit["instruction"],
                    "operation": edit["operation"],
                    "composite": edit["composite"],
                    "seed_index": seed_index,
                    "editor_seed": derive_seed(seed, "edit", job_id),
                    "priority": priority,
                    "cost": cost,
                    "status": OK if keep else DROPPED,
                    "reason": None if keep else "over_budget",
                }
            )
        ctx.progress(len(jobs))
        return jobs
