"""Stage 1, design: an LLM writes batches of {prompt, style, edits} items for the brief.

Batch j asks for the operation at j in the brief's operation cycle, with its own seed, so
every batch is reproducible and the prompt list is the same prefix whatever the batch count.
A batch holds at most B items, fewer when the run is too small for every operation of the
cycle to get a batch of B. Batches are asked for in rounds of at most `ROUND_BATCHES` and
each batch's parsed answer is checkpointed when its round ends, so the requests in memory do
not grow with `run.prompts` and a killed run never pays twice for a design call. Items are
checked one by one: a bad item is dropped with a reason; an answer with no JSON array is
re-asked and finally recorded as a failed batch. Each prompt's `style` is the one its item
names (`item_style`).
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

UNSPECIFIED_STYLE = "unspecified"

# Design calls sent at once: enough to keep a concurrent API busy (default 16 in flight), few
# enough that the requests in memory and the answers lost to a kill stay small.
ROUND_BATCHES = 64


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


def item_style(item: dict[str, Any], styles: list[str]) -> str:
    """The style a designed item says its prompt is written in (its "style" field).

    A style of the brief, named with other case or spacing, is recorded as the brief spells
    it; any other style is recorded as the designer said it (an off-brief style is a fact about
    the data, not something to hide); an item that names none is "unspecified". The prompt
    text is never searched: "a photo of a noir poster" says nothing reliable about its style.
    """
    said = item.get("style")
    if not isinstance(said, str) or not said.strip():
        return UNSPECIFIED_STYLE
    said = " ".join(said.split())
    return next((style for style in styles if style.lower() == said.lower()), said)


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
            needed = min(math.ceil((wanted - len(prompts)) / batch_size), ROUND_BATCHES)
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
                    "style": item_style(item, config.brief.styles),
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
