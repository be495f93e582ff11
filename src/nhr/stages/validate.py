"""Stage 7, validate: the validator scores every surviving candidate; both scores must reach
their thresholds. Scores are written first and the keep-rule applied second, so the scores of
rejected candidates stay available to the survival curve and threshold analysis.

The thresholds are per operation when `validate.thresholds` names it (judges are better at
some categories than others; `nhr calibrate --target-precision` finds the pair that reaches a
precision per category), else the global pair. A category set to `exclude: true` (one the
judge cannot reach the target precision on at any threshold: `nhr calibrate
--exclude-unreachable`) is scored and then dropped with the reason `category_excluded`. How the validator is asked and read (prompt,
parser, scale) is `validate.judge`; the same requests and parsing serve backward, compose and
`nhr calibrate --judge` / `nhr score`, so a judge is measured exactly as it is used.
"""

from __future__ import annotations

import math
from string import Template
from typing import Any

from nhr.backends.base import VisionRequest
from nhr.calls import Failure, LazyRequests, call_model
from nhr.parsing import ParseError, extract_json, parse_scores
from nhr.records import DROPPED, FAILED, OK
from nhr.stages.base import StageContext, ok_rows, template


def score_requests(ctx: StageContext, items: list[dict[str, Any]]) -> LazyRequests:
    """Validator requests for rows with source_image, edited_image and instruction."""
    judge = ctx.config.validate_.judge
    text = Template(judge_prompt(judge.prompt))

    def build(index: int) -> VisionRequest:
        item = items[index]
        return VisionRequest(
            images=(ctx.images.get(item["source_image"]), ctx.images.get(item["edited_image"])),
            prompt=text.substitute(instruction=item["instruction"]),
            max_tokens=judge.max_tokens,
        )

    return LazyRequests(len(items), build)


def judge_prompt(prompt: str) -> str:
    """The prompt template: given inline (it holds $instruction) or named (nhr's templates)."""
    return prompt if "$instruction" in prompt else template(prompt)


def score_parser(judge) -> Any:
    """text -> (adherence, aesthetics) on the judge's scale (`validate.judge`)."""
    low = -math.inf if judge.low is None else judge.low
    high = math.inf if judge.high is None else judge.high
    if judge.parser == "viescore":
        return lambda text: parse_viescore(text, low, high)
    return lambda text: parse_scores(text, low, high)


def parse_viescore(text: str, low: float, high: float) -> tuple[float, float]:
    """VIEScore's answer {"score": [...]}: four numbers (success, overediting, naturalness,
    artifacts; each pair's minimum is the scale's score, as VIEScore combines them) or two
    (adherence, aesthetics). Clamped to [low, high]."""
    data = extract_json(text, expect=dict)
    scores = data.get("score", data.get("scores"))
    if not isinstance(scores, list) or len(scores) not in (2, 4):
        raise ParseError(f"no score list of 2 or 4 numbers in answer: {str(text)[:80]!r}")
    try:
        numbers = [float(value) for value in scores]
    except (TypeError, ValueError):
        raise ParseError(f"score list is not numbers: {scores!r}") from None
    if not all(math.isfinite(n) for n in numbers):
        raise ParseError(f"score list is not finite: {scores!r}")
    if len(numbers) == 4:
        numbers = [min(numbers[0], numbers[1]), min(numbers[2], numbers[3])]
    adherence, aesthetics = (min(high, max(low, n)) for n in numbers)
    return adherence, aesthetics


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
        parse=score_parser(ctx.config.validate_.judge),
        on_done=on_done,
    )


def judge_scores(
    config: Any, role: str, images: Any, items: list[dict[str, Any]], on_done=None
) -> list[Any]:
    """Score items outside a run (`nhr calibrate --judge`, `nhr score`) with the model of `role`
    in `config`, asked and read exactly as the validate stage asks and reads its validator."""
    from nhr.backends import create_backend

    backend = create_backend(getattr(config.models, role))
    ctx = StageContext(config, images, backends=lambda _role: backend)
    return validator_scores(ctx, items, config.validate_.batch_size, on_done=on_done)


def passes(
    ctx: StageContext, adherence: float, aesthetics: float, operation: str | None = None
) -> bool:
    """The keep-rule: both scores reach the operation's thresholds (the global pair for an
    operation without its own, and for composites)."""
    min_adherence, min_aesthetics = ctx.config.validate_.pair(operation)
    return adherence >= min_adherence and aesthetics >= min_aesthetics


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
                if ctx.config.validate_.excluded(candidate.get("operation")):
                    # scored all the same: the scores stay for the next calibration
                    row.update(status=DROPPED, reason="category_excluded")
                    ctx.stats.drop("category_excluded")
                elif passes(ctx, *result, candidate.get("operation")):
                    ctx.stats.rows_out += 1
                else:
                    row.update(status=DROPPED, reason="below_threshold")
                    ctx.stats.drop("below_threshold")
            rows.append(row)
        return rows
