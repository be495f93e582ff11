"""Stage 10, backward-consistency filter.

The validator scores every inverse triplet <edited, inverse instruction, source>. When it
fails, BOTH the inverse and its forward triplet are dropped: a forward edit that cannot be
reversed is usually one that never happened as described (the classic case: "removing" an
object that was not in the source, which looks perfect forwards and absurd backwards).
Composites made before this filter (when `augment.order` puts compose first) are dropped with
their parents.

An inverse can also fail because the LLM worded it badly ("change it"), which says nothing
about the forward edit. So a failed inverse is re-worded (a new, sampled inversion) and
re-scored, up to `inverse_attempts` wordings in all, before the pair is judged inconsistent: a
phantom edit fails whatever the wording, a correct one usually passes with a second wording.
A forward whose inverse could not be written or judged at all is dropped too ("inverse
unavailable"): it was never checked, and precision comes first.
"""

from __future__ import annotations

from typing import Any

from nhr.calls import Failure
from nhr.records import DROPPED, FAILED, OK
from nhr.stages.base import StageContext
from nhr.stages.invert import ask_inverses, inverse_request
from nhr.stages.select import geometric_mean
from nhr.stages.validate import validator_scores

INCONSISTENT = "backward_inconsistent"


class BackwardStage:
    name = "backward"
    global_scope = False
    roles = ("validator", "inverter")

    def __init__(self, previous: str) -> None:
        self.previous = previous
        self.reads = ("design", previous)

    def thresholds(self, ctx: StageContext) -> tuple[float, float]:
        own, validator = ctx.config.backward, ctx.config.validate_
        return (
            own.adherence_threshold
            if own.adherence_threshold is not None
            else validator.adherence_threshold,
            own.aesthetics_threshold
            if own.aesthetics_threshold is not None
            else validator.aesthetics_threshold,
        )

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        triplets = [dict(t) for t in inputs[self.previous]]
        inverses = [t for t in triplets if t["kind"] == "inverse" and t["status"] == OK]
        ctx.stats.rows_in = len(inverses)
        prompts = {p["prompt_id"]: p["prompt"] for p in inputs["design"]}
        forwards = {t["triplet_id"]: t for t in triplets if t["kind"] == "forward"}
        failing = self._score(ctx, inverses)
        for attempt in range(1, ctx.config.backward.inverse_attempts):
            if not failing:
                break
            reworded = self._reword(ctx, failing, prompts, forwards, attempt)
            still = self._score(ctx, reworded)
            failing = [t for t in failing if not any(t is r for r in reworded)] + still
        rejected_forwards = {inverse["parents"][0] for inverse in failing}
        # A forward whose inverse could not be written or judged was never checked: with
        # precision first, it is not released unverified.
        unverified = {
            t["parents"][0] for t in triplets if t["kind"] == "inverse" and t["status"] == FAILED
        }
        for inverse in inverses:
            if inverse["status"] == FAILED:
                ctx.stats.fail(inverse["reason"])
            elif inverse["parents"][0] in rejected_forwards:
                inverse.update(status=DROPPED, reason=INCONSISTENT)
                ctx.stats.drop("inverse_" + INCONSISTENT)
            else:
                ctx.stats.rows_out += 1
        ctx.progress(len(inverses))
        for triplet in triplets:
            if triplet["status"] != OK:
                continue
            if triplet["kind"] == "forward" and triplet["triplet_id"] in rejected_forwards:
                triplet.update(status=DROPPED, reason=INCONSISTENT)
                ctx.stats.drop("forward_" + INCONSISTENT)
            elif triplet["kind"] == "forward" and triplet["triplet_id"] in unverified:
                triplet.update(status=DROPPED, reason="inverse_unavailable")
                ctx.stats.drop("forward_inverse_unavailable")
            elif triplet["kind"] == "composite" and (rejected_forwards | unverified) & set(
                triplet["parents"]
            ):
                triplet.update(status=DROPPED, reason="parent_dropped")
                ctx.stats.drop("composite_parent_dropped")
        return triplets

    def _score(self, ctx: StageContext, inverses: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score inverses in place; return those below the thresholds (model failures are
        marked failed: an inverse that could not be judged condemns nothing)."""
        min_adherence, min_aesthetics = self.thresholds(ctx)
        results = validator_scores(ctx, inverses, ctx.config.backward.batch_size)
        below = []
        for inverse, result in zip(inverses, results):
            if isinstance(result, Failure):
                inverse.update(status=FAILED, reason=result.reason)
                continue
            adherence, aesthetics = result
            inverse.update(
                adherence=adherence,
                aesthetics=aesthetics,
                score=geometric_mean(adherence, aesthetics),
            )
            if adherence < min_adherence or aesthetics < min_aesthetics:
                below.append(inverse)
        return below

    @staticmethod
    def _reword(ctx, inverses, prompts, forwards, attempt: int) -> list[dict[str, Any]]:
        """Ask for a new wording of each inverse; return those that got one."""
        requests = []
        for inverse in inverses:
            forward = forwards[inverse["parents"][0]]
            requests.append(
                inverse_request(
                    ctx,
                    prompts[forward["prompt_id"]],
                    forward["instruction"],
                    forward["triplet_id"],
                    attempt,
                )
            )
        reworded = []
        for inverse, text in zip(inverses, ask_inverses(ctx, requests)):
            if not isinstance(text, Failure) and text != inverse["instruction"]:
                inverse["instruction"] = text
                reworded.append(inverse)
        return reworded
