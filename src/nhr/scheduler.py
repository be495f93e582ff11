"""Budget-aware job sampling (NHR-METHOD §1 stage 4).

Every (source, instruction, editor seed) is a job. Jobs are drawn uniformly at random without
replacement until the budget is spent. The draw is stateless: each job gets a priority
u = hash(run seed, job id) in [0, 1) and jobs are taken in increasing u. Sorting by i.i.d.
uniform keys is a uniformly random permutation, so any prefix is a uniform sample without
replacement; and because u depends only on the job, the draw is the same on every machine
and after every restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nhr.config import BudgetSection


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
