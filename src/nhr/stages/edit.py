"""Stage 5, edit: the editor makes one candidate per scheduled job, at the source's size."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from nhr.backends.base import EditRequest
from nhr.calls import Failure, LazyRequests, call_model
from nhr.records import FAILED, OK
from nhr.stages.base import StageContext, ok_rows, store_image


class EditStage:
    name = "edit"
    reads = ("generate", "schedule")
    global_scope = False
    roles = ("editor",)

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        sources = {s["source_id"]: s for s in inputs["generate"]}
        jobs = ok_rows(inputs["schedule"])
        ctx.stats.rows_in = len(jobs)
        source_bytes = lru_cache(maxsize=64)(ctx.images.get)

        def build(index: int) -> EditRequest:
            job = jobs[index]
            image = source_bytes(sources[job["source_id"]]["image"])
            return EditRequest(image=image, instruction=job["instruction"], seed=job["editor_seed"])

        results = call_model(
            ctx.backend("editor").edit,
            LazyRequests(len(jobs), build),
            batch_size=ctx.config.edit.batch_size,
            retry=ctx.config.retry,
            stats=ctx.stats,
            parse=lambda data: store_image(ctx.images, data),
            on_done=ctx.progress,
        )
        model = ctx.model_info("editor")
        rows = []
        for job, result in zip(jobs, results):
            source = sources[job["source_id"]]
            row = {
                "candidate_id": job["job_id"],
                **{
                    k: job[k]
                    for k in (
                        "job_id",
                        "source_id",
                        "prompt_id",
                        "edit_id",
                        "instruction",
                        "operation",
                        "composite",
                        "editor_seed",
                    )
                },
                "source_image": source["image"],
                "edited_image": None,
                "width": source["width"],
                "height": source["height"],
                "status": OK,
                "reason": None,
                "model": model,
            }
            rows.append(row)
            reason = None
            if isinstance(result, Failure):
                reason = result.reason
            elif result[1] != (source["width"], source["height"]):
                reason = "wrong_size"
            else:
                row["edited_image"] = result[0]
            if reason:
                row.update(status=FAILED, reason=reason)
                ctx.stats.fail(reason)
            else:
                ctx.stats.rows_out += 1
        return rows
