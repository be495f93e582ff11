"""Stage 7, validate: the validator scores every surviving candidate; both scores must reach
their thresholds. Scores are written first and the keep-rule applied second, so the scores of
rejected candidates stay available to the survival curve and threshold analysis."""

from __future__ import annotations

from string import Template
from typing import Any

from nhr.backends.base import VisionRequest
from nhr.calls import Failure, LazyRequests, call_model
from nhr.parsing import parse_scores
from nhr.records import DROPPED, FAILED, OK
from nhr.stages.base import StageContext, ok_rows, template


def score_requests(ctx: StageContext, items: list[dict[str, Any]]) -> LazyRequests:
    """Validator requests for rows with source_image, edited_image and instruction."""
    text = Template(template("score"))

    def build(index: int) -> VisionRequest:
        item = items[index]
        return VisionRequest(
            images=(ctx.images.get(item["source_image"]), ctx.images.get(item["edited_image"])),
            prompt=text.substitute(instruction=item["instruction"]),
            max_tokens=64,
        )

    return LazyRequests(len(items), build)


def validator_scores(
    ctx: StageContext, items: list[dict[str, Any]], batch_size: int, on_done=None
) -> list[Any]:
    """(adherence, aesthetics) or a Failure per item, from the validator model."""
    return call_model(
        ctx.backend("validator").ask,
        score_requests(ctx, items),
        batch_size=batch_size,
        retry=ctx.config.retry,
        stats=ctx.stats,
        parse=parse_scores,
        on_done=on_done,
    )


def passes(ctx: StageContext, adherence: float, aesthetics: float) -> bool:
    settings = ctx.config.validate_
    return adherence >= settings.adherence_threshold and aesthetics >= settings.aesthetics_threshold


class ValidateStage:
    name = "validate"
    reads = ("edit", "prefilter")
    global_scope = False
    roles = ("validator",)

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        survivors = {row["candidate_id"] for row in ok_rows(inputs["prefilter"])}
        candidates = [c for c in ok_rows(inputs["edit"]) if c["candidate_id"] in survivors]
        ctx.stats.rows_in = len(candidates)
        results = validator_scores(
            ctx, candidates, ctx.config.validate_.batch_size, on_done=ctx.progress
        )
        model = ctx.model_info("validator")
        rows = []
        for candidate, result in zip(candidates, results):
            row = {
                "candidate_id": candidate["candidate_id"],
                "adherence": None,
                "aesthetics": None,
                "status": OK,
                "reason": None,
                "model": model,
            }
            if isinstance(result, Failure):
                row.update(status=FAILED, reason=result.reason)
                ctx.stats.fail(result.reason)
            else:
                row["adherence"], row["aesthetics"] = result
                if passes(ctx, *result):
                    ctx.stats.rows_out += 1
                else:
                    row.update(status=DROPPED, reason="below_threshold")
                    ctx.stats.drop("below_threshold")
            rows.append(row)
        return rows
