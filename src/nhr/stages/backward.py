"""Stage 10, backward-consistency filter.

The validator scores every inverse triplet <edited, inverse instruction, source>. When it
fails, BOTH the inverse and its forward triplet are dropped: a forward edit that cannot be
reversed is usually one that never happened as described (the classic case: "removing" an
object that was not in the source, which looks perfect forwards and absurd backwards).
Composites made before this filter (when `augment.order` puts compose first) are dropped with
their parents.
"""

from __future__ import annotations

from typing import Any

from nhr.calls import Failure, call_model
from nhr.parsing import parse_scores
from nhr.records import DROPPED, FAILED, OK
from nhr.stages.base import StageContext
from nhr.stages.select import geometric_mean
from nhr.stages.validate import score_requests

INCONSISTENT = "backward_inconsistent"


class BackwardStage:
    name = "backward"
    global_scope = False
    roles = ("validator",)

    def __init__(self, previous: str) -> None:
        self.previous = previous
        self.reads = (previous,)

    def thresholds(self, ctx: StageContext) -> tuple[float, float]:
        own, validator = ctx.config.backward, ctx.config.validate_
        return (
            own.adherence_threshold if own.adherence_threshold is not None else validator.adherence_threshold,
            own.aesthetics_threshold if own.aesthetics_threshold is not None else validator.aesthetics_threshold,
        )

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        triplets = [dict(t) for t in inputs[self.previous]]
        inverses = [t for t in triplets if t["kind"] == "inverse" and t["status"] == OK]
        ctx.stats.rows_in = len(inverses)
        results = call_model(
            ctx.backend("validator").ask,
            score_requests(ctx, inverses),
            batch_size=ctx.config.backward.batch_size,
            retry=ctx.config.retry,
            stats=ctx.stats,
            parse=parse_scores,
            on_done=ctx.progress,
        )
        min_adherence, min_aesthetics = self.thresholds(ctx)
        rejected_forwards: set[str] = set()
        for inverse, result in zip(inverses, results):
            if isinstance(result, Failure):
                inverse.update(status=FAILED, reason=result.reason)
                ctx.stats.fail(result.reason)
                continue
            adherence, aesthetics = result
            inverse.update(adherence=adherence, aesthetics=aesthetics,
                           score=geometric_mean(adherence, aesthetics))
            if adherence >= min_adherence and aesthetics >= min_aesthetics:
                ctx.stats.rows_out += 1
            else:
                inverse.update(status=DROPPED, reason=INCONSISTENT)
                rejected_forwards.add(inverse["parents"][0])
                ctx.stats.drop("inverse_" + INCONSISTENT)
        for triplet in triplets:
            if triplet["status"] != OK:
                continue
            if triplet["kind"] == "forward" and triplet["triplet_id"] in rejected_forwards:
                triplet.update(status=DROPPED, reason=INCONSISTENT)
                ctx.stats.drop("forward_" + INCONSISTENT)
            elif triplet["kind"] == "composite" and rejected_forwards & set(triplet["parents"]):
                triplet.update(status=DROPPED, reason="parent_dropped")
                ctx.stats.drop("composite_parent_dropped")
        return triplets
