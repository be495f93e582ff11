"""Stage 2, generate: N source images per prompt, each from its own seed and size bucket.

With `sources.kind: images` the sources are the user's photos instead (PhotoSourceStage): the
stage of the same name turns each photo row of design (nhr/stages/photo_design.py) into a
source row, with the photo's provenance, so every later stage reads the table it always read.
"""

from __future__ import annotations

from typing import Any

from nhr.backends.base import GenerateRequest
from nhr.calls import Failure, call_model
from nhr.ids import derive_seed, stable_id
from nhr.records import FAILED, OK
from nhr.stages.base import Stage, StageContext, image_size, store_image


def pick_bucket(buckets: list[tuple[int, int]], run_seed: int, source_id: str) -> tuple[int, int]:
    """A deterministic, uniform choice of resolution bucket per source image."""
    return tuple(buckets[derive_seed(run_seed, "bucket", source_id) % len(buckets)])  # type: ignore[return-value]


class GenerateStage:
    name = "generate"
    reads = ("design",)
    global_scope = False
    roles = ("generator",)

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        config = ctx.config
        rows: list[dict[str, Any]] = []
        requests: list[GenerateRequest] = []
        for prompt in inputs["design"]:
            for seed_index in range(config.generate.images_per_prompt):
                source_id = stable_id(prompt["prompt_id"], "source", seed_index)
                width, height = pick_bucket(config.generate.buckets, config.run.seed, source_id)
                seed = derive_seed(config.run.seed, "generate", source_id)
                rows.append(
                    {
                        "source_id": source_id,
                        "prompt_id": prompt["prompt_id"],
                        "seed_index": seed_index,
                        "seed": seed,
                        "width": width,
                        "height": height,
                    }
                )
                requests.append(GenerateRequest(prompt["prompt"], width, height, seed))
        ctx.stats.rows_in = len(inputs["design"])
        results = call_model(
            ctx.backend("generator").generate,
            requests,
            batch_size=config.generate.batch_size,
            retry=config.retry,
            stats=ctx.stats,
            parse=lambda data: store_image(ctx.images, data),
            on_done=ctx.progress,
        )
        model = ctx.model_info("generator")
        for row, result in zip(rows, results):
            row.update(image=None, status=OK, reason=None, model=model)
            if isinstance(result, Failure):
                row.update(status=FAILED, reason=result.reason)
                ctx.stats.fail(result.reason)
                continue
            row["image"], (row["width"], row["height"]) = result
            ctx.stats.rows_out += 1
        return rows


class PhotoSourceStage:
    """One source row per drawn photo (sources.kind: images): ok with its normalised image
    when it has edits to make, else dropped or failed with the reason design recorded."""

    name = "generate"
    reads = ("design",)
    global_scope = False
    roles: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        from nhr.stages.photo_design import count_reason

        rows = []
        ctx.stats.rows_in = len(inputs["design"])
        for photo in inputs["design"]:
            row = {
                "source_id": stable_id(photo["prompt_id"], "source", 0),
                "prompt_id": photo["prompt_id"],
                "seed_index": 0,
                "seed": None,
                "width": None,
                "height": None,
                "image": photo["source_image"],
                "status": OK,
                "reason": None,
                "model": None,
                **{key: photo[key] for key in ("origin", "origin_file", "origin_row", "license")},
            }
            reason = photo["source_reason"]
            if photo["source_image"] is not None:
                row["width"], row["height"] = image_size(ctx.images.get(photo["source_image"]))
            status = count_reason(ctx.stats, reason)
            if status != OK:
                row.update(status=status, reason=reason)
            rows.append(row)
        return rows


def source_stages(config) -> list[Stage]:
    """The two stages that make a run's source images and what to edit in them: designed
    prompts and a generator (sources.kind: generate), or the user's photos."""
    if config.sources.kind == "images":
        from nhr.stages.photo_design import PhotoDesignStage

        return [PhotoDesignStage(), PhotoSourceStage()]
    from nhr.stages.design import DesignStage

    return [DesignStage(), GenerateStage()]
