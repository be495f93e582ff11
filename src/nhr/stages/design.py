"""Stage 1, design: an LLM writes batches of {prompt, edits} items for the brief.

Batch j asks for the operation at j in the brief's operation cycle, with its own seed, so
every batch is reproducible and the prompt list is the same prefix whatever the batch count.
A batch holds at most B items, fewer when the run is too small for every operation of the
cycle to get a batch of B. Each batch's
parsed answer is checkpointed, so a killed run never pays twice for a design call. Items are
checked one by one: a bad item is dropped with a reason; an answer with no JSON array is
re-asked and finally recorded as a failed batch.
"""

from __future__ import annotations

import math
from string import Template
from typing import Any

from nhr import taxonomy
from nhr.backends.base import ChatMessage, TextRequest
from nhr.calls import Failure, call_model
from nhr.ids import derive_seed, stable_id
from nhr.parsing import ParseError, extract_json
from nhr.stages.base import StageContext, template


def batch_operation(config, batch_index: int) -> str:
    cycle = config.brief.operation_cycle()
    return cycle[batch_index % len(cycle)]


def effective_batch_size(config) -> int:
    """B, or less when prompts / B batches would leave operations of the cycle undesigned."""
    cycle = len(config.brief.operation_cycle())
    return max(1, min(config.design.batch_size, math.ceil(config.run.prompts / cycle)))


def design_request(ctx: StageContext, batch_index: int) -> TextRequest:
    config = ctx.config
    operation = taxonomy.get(batch_operation(config, batch_index))
    text = Template(template("design")).substitute(
        topic=config.brief.topic,
        styles=", ".join(config.brief.styles),
        operation=operation.key,
        guidance=operation.guidance,
        batch_size=effective_batch_size(config),
    )
    return TextRequest(
        messages=(ChatMessage("user", text),),
        temperature=config.design.temperature,
        seed=derive_seed(config.run.seed, "design", batch_index),
    )


def parse_design_answer(text: str) -> list[Any]:
    items = extract_json(text, expect=list)
    if not items:
        raise ParseError("the design answer is an empty array")
    return items


def clean_item(item: Any) -> tuple[str, list[dict[str, Any]]] | str:
    """(prompt, edits) of one designed item, or the reason it is unusable."""
    if not isinstance(item, dict):
        return "item_not_object"
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "missing_prompt"
    raw_edits = item.get("edits")
    if not isinstance(raw_edits, list):
        return "missing_edits"
    edits: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in raw_edits:
        if isinstance(raw, str):
            instruction, composite = raw, False
        elif isinstance(raw, dict) and isinstance(raw.get("instruction"), str):
            instruction, composite = raw["instruction"], bool(raw.get("composite", False))
        else:
            continue
        instruction = " ".join(instruction.split())
        if instruction and instruction.lower() not in seen:
            seen.add(instruction.lower())
            edits.append({"instruction": instruction, "composite": composite})
    if not edits:
        return "no_usable_edits"
    return " ".join(prompt.split()), edits


def guess_style(prompt: str, styles: list[str]) -> str:
    lowered = prompt.lower()
    for style in styles:
        if style.lower() in lowered:
            return style
    return "unspecified"


class DesignStage:
    name = "design"
    reads: tuple[str, ...] = ()
    global_scope = True
    roles = ("designer",)

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
        config = ctx.config
        wanted = config.run.prompts
        batch_size = effective_batch_size(config)
        max_batches = config.design.max_batches or 3 * math.ceil(wanted / batch_size) + 2
        model = ctx.model_info("designer")
        prompts: list[dict[str, Any]] = []
        seen_prompts: set[str] = set()
        next_batch = 0
        while len(prompts) < wanted and next_batch < max_batches:
            needed = math.ceil((wanted - len(prompts)) / batch_size)
            indices = list(range(next_batch, min(next_batch + needed, max_batches)))
            next_batch = indices[-1] + 1
            for batch_index, answer in zip(indices, self._answers(ctx, indices)):
                if isinstance(answer, Failure):
                    ctx.stats.fail(answer.reason)
                    continue
                self._add_items(ctx, batch_index, answer, prompts, seen_prompts, model)
        if len(prompts) < wanted:
            ctx.stats.fail("too_few_prompts", wanted - len(prompts))
        kept = prompts[:wanted]
        if len(prompts) > len(kept):
            ctx.stats.drop("over_target", len(prompts) - len(kept))
        ctx.stats.rows_out = len(kept)
        shards: dict[int, list[dict[str, Any]]] = {}
        for row in kept:
            shards.setdefault(row["prompt_index"] // config.run.shard_size, []).append(row)
        return shards

    def _answers(self, ctx: StageContext, indices: list[int]) -> list[Any]:
        """Parsed answers per batch index, from checkpoints where a previous run got them."""
        answers: dict[int, Any] = {}
        missing = []
        for index in indices:
            saved = ctx.load_checkpoint(f"batch-{index:05d}")
            if saved is None:
                missing.append(index)
            else:
                answers[index] = saved["items"] if "items" in saved else Failure(**saved["failure"])
        requests = [design_request(ctx, index) for index in missing]
        results = call_model(
            ctx.backend("designer").chat,
            requests,
            batch_size=len(requests) or 1,
            retry=ctx.config.retry,
            stats=ctx.stats,
            parse=parse_design_answer,
        )
        for index, result in zip(missing, results):
            if isinstance(result, Failure):
                ctx.save_checkpoint(f"batch-{index:05d}", {"failure": vars(result)})
            else:
                ctx.save_checkpoint(f"batch-{index:05d}", {"items": result})
            answers[index] = result
        ctx.progress(len(indices))
        return [answers[index] for index in indices]

    def _add_items(self, ctx, batch_index, items, prompts, seen_prompts, model) -> None:
        config = ctx.config
        operation = batch_operation(config, batch_index)
        for item in items:
            ctx.stats.rows_in += 1
            cleaned = clean_item(item)
            if isinstance(cleaned, str):
                ctx.stats.drop(cleaned)
                continue
            prompt, edits = cleaned
            if prompt.lower() in seen_prompts:
                ctx.stats.drop("duplicate_prompt")
                continue
            seen_prompts.add(prompt.lower())
            index = len(prompts)
            prompt_id = stable_id(config.run.seed, "prompt", index, prompt)
            prompts.append(
                {
                    "prompt_id": prompt_id,
                    "prompt_index": index,
                    "prompt": prompt,
                    "operation": operation,
                    "style": guess_style(prompt, config.brief.styles),
                    "edits": [
                        {
                            "edit_id": stable_id(prompt_id, "edit", k, edit["instruction"]),
                            "instruction": edit["instruction"],
                            "operation": operation,
                            "composite": edit["composite"],
                        }
                        for k, edit in enumerate(edits)
                    ],
                    "design_batch": batch_index,
                    "model": model,
                }
            )
