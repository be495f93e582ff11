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

Two quality levers (README "Quality levers"): `validate.samples: K` asks the validator K times
per candidate, sampled (temperature `validate.sample_temperature`, seed = sample index), and
keeps the mean or the min of the K readings (`validate.aggregate`) as the row's adherence and
aesthetics, the readings themselves in `adherence_samples` / `aesthetics_samples`;
`validate.second_judge` asks `models.second_validator` the same way about every candidate the
validator passes, and the candidate must pass the same thresholds with it too; with
`validate.second_judge_rule: mean` it scores every candidate instead, and the mean of the two
judges' scores must pass (`_second_judge`). With the
defaults (K = 1, no second judge) the requests and rows are exactly those of one greedy judge.
"""

from __future__ import annotations

import math
from string import Template
from typing import Any

from nhr.backends.base import VisionRequest
from nhr.calls import Failure, LazyRequests, call_model, grouped_samples, sampled
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


def aggregate(readings: list[tuple[float, float]], how: str) -> tuple[float, float]:
    """One (adherence, aesthetics) from K readings: the mean of each score (rounded to 6
    decimals, so 4.6 and 4.8 average to exactly 4.7), or the min of each (every sample must
    reach a threshold)."""
    if len(readings) == 1:
        return readings[0]
    adherences, aesthetics = zip(*readings)
    if how == "min":
        return min(adherences), min(aesthetics)
    return round(sum(adherences) / len(readings), 6), round(sum(aesthetics) / len(readings), 6)


def sampled_scores(
    ctx: StageContext, role: str, items: list[dict[str, Any]], on_done=None
) -> list[Any]:
    """Per item, the list of its K (adherence, aesthetics) readings by the model of `role`, or
    the Failure of its first failed sample (a candidate is judged on all K or not at all)."""
    settings = ctx.config.validate_
    results = call_model(
        ctx.backend(role).ask,
        sampled(score_requests(ctx, items), settings.samples, settings.sample_temperature),
        batch_size=settings.batch_size,
        retry=ctx.config.retry,
        stats=ctx.stats,
        parse=score_parser(settings.judge),
        on_done=on_done,
    )
    return grouped_samples(results, settings.samples)


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
    config: Any,
    role: str,
    images: Any,
    items: list[dict[str, Any]],
    on_done=None,
    cache: Any = None,
) -> list[Any]:
    """Score items outside a run (`nhr calibrate --judge`, `nhr score`) with the model of `role`
    in `config`, asked and read exactly as the validate stage asks and reads its validator:
    with `validate.samples` K > 1, K sampled requests per item, aggregated as the stage does.
    With `cache` (a Storage), answers are kept there and a repeated request is not sent
    again (nhr.cache): a killed `nhr score --output DIR` does not pay twice."""
    from nhr.backends import create_backend

    model = getattr(config.models, role, None)
    if model is None:
        raise ValueError(f"the judge config has no models.{role} (see --role)")
    backend = create_backend(model)
    if cache is not None:
        from nhr.cache import CachedBackend

        backend = CachedBackend(backend, cache, images)
    ctx = StageContext(config, images, backends=lambda _role: backend)
    results = sampled_scores(ctx, role, items, on_done=on_done)
    how = config.validate_.aggregate
    return [r if isinstance(r, Failure) else aggregate(r, how) for r in results]


def passes(
    ctx: StageContext, adherence: float, aesthetics: float, operation: str | None = None
) -> bool:
    """The keep-rule: both scores reach the operation's thresholds (the global pair for an
    operation without its own, and for composites)."""
    min_adherence, min_aesthetics = ctx.config.validate_.pair(operation)
    return adherence >= min_adherence and aesthetics >= min_aesthetics


def record_scores(
    row: dict[str, Any], readings: list[tuple[float, float]], settings: Any, prefix: str = ""
) -> tuple[float, float]:
    """Write a judge's aggregated scores (and, with K > 1, its K readings) into `row`'s
    `<prefix>adherence` / `<prefix>aesthetics` columns; returns the aggregated pair."""
    scores = aggregate(readings, settings.aggregate)
    row[f"{prefix}adherence"], row[f"{prefix}aesthetics"] = scores
    if settings.samples > 1:
        row[f"{prefix}adherence_samples"] = [a for a, _ in readings]
        row[f"{prefix}aesthetics_samples"] = [b for _, b in readings]
    return scores


class ValidateStage:
    name = "validate"
    reads = ("edit", "prefilter")
    global_scope = False
    roles: tuple[str, ...] = ("validator",)

    def __init__(self, config: Any = None) -> None:
        if config is not None and config.validate_.second_judge:
            self.roles = ("validator", "second_validator")

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        settings = ctx.config.validate_
        survivors = {row["candidate_id"] for row in ok_rows(inputs["prefilter"])}
        candidates = [c for c in ok_rows(inputs["edit"]) if c["candidate_id"] in survivors]
        ctx.stats.rows_in = len(candidates)
        results = sampled_scores(ctx, "validator", candidates, on_done=ctx.progress)
        model = ctx.model_info("validator")
        mean_rule = settings.second_judge and settings.second_judge_rule == "mean"
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
            if settings.samples > 1:
                row.update(adherence_samples=None, aesthetics_samples=None)
            if isinstance(result, Failure):
                row.update(status=FAILED, reason=result.reason)
                ctx.stats.fail(result.reason)
            else:
                record_scores(row, result, settings)
                if not mean_rule:  # else decided on the mean of both judges (_second_judge)
                    self._decide(ctx, row, candidate.get("operation"))
            rows.append(row)
        if settings.second_judge:
            self._second_judge(ctx, candidates, rows)
        ctx.stats.rows_out += sum(row["status"] == OK for row in rows)
        return rows

    @staticmethod
    def _decide(ctx: StageContext, row: dict[str, Any], operation: str | None) -> None:
        """The keep-rule on the row's adherence and aesthetics."""
        if ctx.config.validate_.excluded(operation):
            # scored all the same: the scores stay for the next calibration
            row.update(status=DROPPED, reason="category_excluded")
            ctx.stats.drop("category_excluded")
        elif not passes(ctx, row["adherence"], row["aesthetics"], operation):
            row.update(status=DROPPED, reason="below_threshold")
            ctx.stats.drop("below_threshold")

    @staticmethod
    def _second_judge(
        ctx: StageContext, candidates: list[dict[str, Any]], rows: list[dict[str, Any]]
    ) -> None:
        """Ask the second judge about every row still OK, then apply `second_judge_rule`.

        `both_pass`: the rows are those the validator passed (the others are dropped whatever
        it says), and the candidate must pass the same thresholds with the second judge too.
        `mean`: the rows are every candidate the validator scored (undecided yet), and the
        mean of the two judges' scores becomes the row's adherence and aesthetics, to which
        the keep-rule applies (and by which best-of ranks). Two judges' own errors are
        independent, so their mean halves that part of the error; the part all judges share
        stays. The validator's own readings stay in adherence_samples / aesthetics_samples
        (one each with samples: 1)."""
        settings = ctx.config.validate_
        model = ctx.model_info("second_validator")
        for row in rows:
            row.update(second_adherence=None, second_aesthetics=None, second_model=model)
            if settings.samples > 1:
                row.update(second_adherence_samples=None, second_aesthetics_samples=None)
        asked = [index for index, row in enumerate(rows) if row["status"] == OK]
        results = sampled_scores(ctx, "second_validator", [candidates[i] for i in asked])
        for index, result in zip(asked, results):
            row = rows[index]
            operation = candidates[index].get("operation")
            if isinstance(result, Failure):
                reason = f"second_judge_{result.reason}"
                row.update(status=FAILED, reason=reason)
                ctx.stats.fail(reason)
                continue
            second = record_scores(row, result, settings, prefix="second_")
            if settings.second_judge_rule == "mean":
                first = (row["adherence"], row["aesthetics"])
                if settings.samples == 1:
                    row["adherence_samples"], row["aesthetics_samples"] = [first[0]], [first[1]]
                row["adherence"], row["aesthetics"] = (
                    round((mine + other) / 2, 6) for mine, other in zip(first, second)
                )
                ValidateStage._decide(ctx, row, operation)
            elif not passes(ctx, *second, operation):
                row.update(status=DROPPED, reason="second_judge_below_threshold")
                ctx.stats.drop("second_judge_below_threshold")
