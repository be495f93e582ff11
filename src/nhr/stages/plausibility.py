"""Stage 3, plausibility gate: a VLM says whether a source depicts its prompt plausibly.

Failed sources get no edit jobs. An answer that is neither yes nor no is counted apart
(`unparseable`) from a clear no, since it says something about the gate model, not the image.

A quality lever (README "Quality levers"): `plausibility.samples: K` asks the gate K times per
source, sampled (temperature `plausibility.sample_temperature`, seed = sample index), and a
source fails on any clear no (`reject: any_no`) or on a majority of them (`majority_no`); the
K answers are kept in `answers`. A defect inherited from the source is shared by every edit of
it and judges tend to miss it together, so catching it here is cheaper than after M edits.
With the default (K = 1) the requests and rows are exactly those of one greedy request.
"""

from __future__ import annotations

from string import Template
from typing import Any

from nhr.backends.base import VisionRequest
from nhr.calls import Failure, LazyRequests, call_model, grouped_samples, sampled
from nhr.parsing import parse_yes_no
from nhr.records import DROPPED, FAILED, OK
from nhr.stages.base import StageContext, ok_rows, template


class PlausibilityStage:
    name = "plausibility"
    reads = ("design", "generate")
    global_scope = False
    roles = ("gate",)

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        prompts = {row["prompt_id"]: row["prompt"] for row in inputs["design"]}
        sources = ok_rows(inputs["generate"])
        ctx.stats.rows_in = len(sources)
        if not ctx.config.plausibility.enabled:
            ctx.stats.rows_out = len(sources)
            return [
                {
                    "source_id": s["source_id"],
                    "prompt_id": s["prompt_id"],
                    "answer": None,
                    "status": OK,
                    "reason": "gate_disabled",
                    "model": None,
                }
                for s in sources
            ]
        settings = ctx.config.plausibility
        samples = settings.samples
        text = Template(template("gate"))

        def build(index: int) -> VisionRequest:
            return VisionRequest(
                images=(ctx.images.get(sources[index]["image"]),),
                prompt=text.substitute(prompt=prompts[sources[index]["prompt_id"]]),
                max_tokens=8,
            )

        requests = sampled(LazyRequests(len(sources), build), samples, settings.sample_temperature)
        answers = call_model(
            ctx.backend("gate").ask,
            requests,
            batch_size=settings.batch_size,
            retry=ctx.config.retry,
            stats=ctx.stats,
            parse=lambda answer: (answer, parse_yes_no(answer)),
            on_done=ctx.progress,
        )
        model = ctx.model_info("gate")
        rows = []
        for source, result in zip(sources, grouped_samples(answers, samples)):
            row = {
                "source_id": source["source_id"],
                "prompt_id": source["prompt_id"],
                "answer": None,
                "status": OK,
                "reason": None,
                "model": model,
            }
            if samples > 1:
                row["answers"] = None
            if isinstance(result, Failure):  # a source is judged on all K answers or not at all
                row.update(status=FAILED, reason=result.reason)
                ctx.stats.fail(result.reason)
            else:
                row["answer"], passed = decide(result, settings.reject)
                if samples > 1:
                    row["answers"] = [answer for answer, _ in result]
                if passed:
                    ctx.stats.rows_out += 1
                else:
                    row.update(status=DROPPED, reason="implausible")
                    ctx.stats.drop("implausible")
            rows.append(row)
        return rows


def decide(looks: list[tuple[str, bool]], reject: str) -> tuple[str, bool]:
    """(the answer to record, passed) from K (answer, yes) looks: with any_no the first clear
    no fails the source, with majority_no more than half of them must say no; the recorded
    answer is the first that agrees with the decision."""
    noes = [answer for answer, yes in looks if not yes]
    failed = bool(noes) if reject == "any_no" else 2 * len(noes) > len(looks)
    if failed:
        return noes[0], False
    return next(answer for answer, yes in looks if yes), True
