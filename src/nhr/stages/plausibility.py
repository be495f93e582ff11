"""Stage 3, plausibility gate: a VLM says whether a source depicts its prompt plausibly.

Failed sources get no edit jobs. An answer that is neither yes nor no is counted apart
(`unparseable`) from a clear no, since it says something about the gate model, not the image.
"""

from __future__ import annotations

from string import Template
from typing import Any

from nhr.backends.base import VisionRequest
from nhr.calls import Failure, call_model
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
        text = Template(template("gate"))
        requests = [
            VisionRequest(
                images=(ctx.images.get(source["image"]),),
                prompt=text.substitute(prompt=prompts[source["prompt_id"]]),
                max_tokens=8,
            )
            for source in sources
        ]
        answers = call_model(
            ctx.backend("gate").ask,
            requests,
            batch_size=ctx.config.plausibility.batch_size,
            retry=ctx.config.retry,
            stats=ctx.stats,
            parse=lambda answer: (answer, parse_yes_no(answer)),
            on_done=ctx.progress,
        )
        model = ctx.model_info("gate")
        rows = []
        for source, result in zip(sources, answers):
            row = {
                "source_id": source["source_id"],
                "prompt_id": source["prompt_id"],
                "answer": None,
                "status": OK,
                "reason": None,
                "model": model,
            }
            if isinstance(result, Failure):
                row.update(status=FAILED, reason=result.reason)
                ctx.stats.fail(result.reason)
            else:
                row["answer"], passed = result
                if passed:
                    ctx.stats.rows_out += 1
                else:
                    row.update(status=DROPPED, reason="implausible")
                    ctx.stats.drop("implausible")
            rows.append(row)
        return rows
