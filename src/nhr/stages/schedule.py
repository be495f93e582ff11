"""Stage 4, schedule: turn (plausible source, instruction) pairs into edit jobs.

This is the one barrier between generation and editing: a budget is a global quantity, so
jobs are drawn from the pool of every shard at once (see `nhr.scheduler`). Jobs over budget
are kept as `dropped` rows, so the report can say how much more the pool could give.
"""

from __future__ import annotations

from typing import Any

from nhr.ids import derive_seed, stable_id, unit_interval
from nhr.records import DROPPED, OK
from nhr.scheduler import draw_jobs, job_cost
from nhr.stages.base import StageContext


class ScheduleStage:
    name = "schedule"
    reads = ("design", "generate", "plausibility")
    global_scope = True
    roles: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
        config = ctx.config
        seed = config.run.seed
        jobs_by_shard: dict[int, list[dict[str, Any]]] = {}
        all_jobs: list[dict[str, Any]] = []
        for shard in sorted(inputs["design"]):
            prompts = {p["prompt_id"]: p for p in inputs["design"][shard]}
            sources = {s["source_id"]: s for s in inputs["generate"][shard]}
            jobs = jobs_by_shard.setdefault(shard, [])
            for gate_row in inputs["plausibility"][shard]:
                if gate_row["status"] != OK:
                    continue
                ctx.stats.rows_in += 1
                source = sources[gate_row["source_id"]]
                cost = job_cost(config.schedule.budget, source["width"], source["height"])
                for edit in prompts[gate_row["prompt_id"]]["edits"]:
                    for seed_index in range(config.schedule.seeds_per_pair):
                        job_id = stable_id(source["source_id"], edit["edit_id"], seed_index)
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
                                "priority": unit_interval(seed, "schedule", job_id),
                                "cost": cost,
                            }
                        )
            all_jobs.extend(jobs)
        chosen, spent = draw_jobs(all_jobs, config.schedule.budget)
        for job, keep in zip(all_jobs, chosen):
            job["status"], job["reason"] = (OK, None) if keep else (DROPPED, "over_budget")
            if keep:
                ctx.stats.rows_out += 1
            else:
                ctx.stats.drop("over_budget")
        ctx.progress(len(all_jobs))
        return jobs_by_shard
