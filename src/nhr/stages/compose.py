"""Stage 11, compose: two accepted edits of one source give a composite triplet.

    <edited 1, inverse(instruction 1) + " and " + instruction 2, edited 2>

with category "A & B" (the inverse of edit 1's operation, then edit 2's). Ordered pairs, one or
both directions, at most `max_per_source` per source (a seeded random subset), and by default
re-validated by the validator, since two correct halves do not always make a correct whole.
"""

from __future__ import annotations

from typing import Any

from nhr import taxonomy
from nhr.calls import Failure, call_model
from nhr.ids import stable_id, unit_interval
from nhr.parsing import parse_scores
from nhr.records import DROPPED, FAILED, OK
from nhr.stages.base import StageContext
from nhr.stages.select import geometric_mean
from nhr.stages.validate import passes, score_requests


def join_instructions(first: str, second: str) -> str:
    first = first.strip().rstrip(".!")
    second = second.strip()
    if second[:1].isupper() and not second[1:2].isupper():  # keep "TV", lower "Make"
        second = second[0].lower() + second[1:]
    return f"{first} and {second}"


class ComposeStage:
    name = "compose"
    global_scope = False
    roles = ("validator",)

    def __init__(self, previous: str) -> None:
        self.previous = previous
        self.reads = (previous,)

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        settings = ctx.config.compose
        triplets = inputs[self.previous]
        inverse_of = {
            t["parents"][0]: t["instruction"]
            for t in triplets
            if t["kind"] == "inverse" and t["status"] == OK
        }
        by_source: dict[str, list[dict[str, Any]]] = {}
        for t in triplets:
            if t["kind"] == "forward" and t["status"] == OK:
                by_source.setdefault(t["source_id"], []).append(t)
        composites = []
        for _, forwards in sorted(by_source.items()):
            made = []
            for a in forwards:
                for b in forwards:
                    if a is b or a["triplet_id"] not in inverse_of:
                        continue
                    if not settings.both_directions and a["triplet_id"] > b["triplet_id"]:
                        continue
                    made.append(self._composite(a, b, inverse_of[a["triplet_id"]]))
            if settings.max_per_source is not None:
                made.sort(key=lambda c: unit_interval(ctx.config.run.seed, "compose", c["triplet_id"]))
                made = made[: settings.max_per_source]
            composites.extend(sorted(made, key=lambda c: c["triplet_id"]))
        ctx.stats.rows_in = len(composites)
        if settings.revalidate:
            self._revalidate(ctx, composites)
        else:
            ctx.stats.rows_out = len(composites)
        return triplets + composites

    @staticmethod
    def _composite(a: dict[str, Any], b: dict[str, Any], inverse_a: str) -> dict[str, Any]:
        first_operation = taxonomy.inverse_of(a["operation"])
        return {
            **b,
            "triplet_id": stable_id("composite", a["triplet_id"], b["triplet_id"]),
            "kind": "composite",
            "source_image": a["edited_image"],
            "edited_image": b["edited_image"],
            "instruction": join_instructions(inverse_a, b["instruction"]),
            "operation": f"{first_operation}+{b['operation']}",
            "category": taxonomy.composite_label(first_operation, b["operation"]),
            "composite": True,
            "adherence": None,
            "aesthetics": None,
            "score": None,
            "attempts": None,
            "passes": None,
            "parents": [a["triplet_id"], b["triplet_id"]],
            "status": OK,
            "reason": None,
        }

    def _revalidate(self, ctx: StageContext, composites: list[dict[str, Any]]) -> None:
        results = call_model(
            ctx.backend("validator").ask,
            score_requests(ctx, composites),
            batch_size=ctx.config.compose.batch_size,
            retry=ctx.config.retry,
            stats=ctx.stats,
            parse=parse_scores,
            on_done=ctx.progress,
        )
        for composite, result in zip(composites, results):
            if isinstance(result, Failure):
                composite.update(status=FAILED, reason=result.reason)
                ctx.stats.fail(result.reason)
                continue
            adherence, aesthetics = result
            composite.update(adherence=adherence, aesthetics=aesthetics,
                             score=geometric_mean(adherence, aesthetics))
            if passes(ctx, adherence, aesthetics):
                ctx.stats.rows_out += 1
            else:
                composite.update(status=DROPPED, reason="composite_rejected")
                ctx.stats.drop("composite_rejected")
