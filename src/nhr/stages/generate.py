"""Stage 2, generate: N source images per prompt, each from its own seed and size bucket."""

from __future__ import annotations

from typing import Any

from nhr.backends.base import GenerateRequest
from nhr.calls import Failure, call_model
from nhr.ids import derive_seed, stable_id
from nhr.records import FAILED, OK
from nhr.stages.base import StageContext, store_image


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
