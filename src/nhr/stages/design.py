"""Stage 1, design: an LLM writes batches of {prompt, style, edits} items for the brief.

Batch j asks for B = `design.batch_size` items of the operation at j in the brief's operation
cycle, with its own seed, so every batch is reproducible whatever the prompt count. Batches
come in blocks, one batch per operation of the cycle, and a block's prompts are numbered
round-robin: the first item of every batch of the block, then the second, and so on. So a
small run still gets every operation of the cycle, and the prompts of a run of N prompts
are exactly the first N of any larger run: a run can grow (`nhr mine --prompts`) into the
run it would have been. The cost is that a run smaller than a block (cycle length x B items)
asks for more items than it keeps (counted as dropped `over_target`); design calls are the
cheapest of the pipeline. Blocks are asked for in rounds of about `ROUND_BATCHES` batches and
each batch's parsed answer is checkpointed when its round ends, so the requests in memory do
not grow with `run.prompts` and a killed run never pays twice for a design call. Items are
checked one by one: a bad item is dropped with a reason; an answer with no JSON array is
re-asked and finally recorded as a failed batch. Each prompt's `style` is the one its item
names (`item_style`). Prompts leave as soon as their shard is complete (the stage yields each
shard's rows for the adapter to write): what stays in memory is one 16-byte key per prompt,
to refuse duplicates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from string import Template
from typing import Any

from nhr import taxonomy
from nhr.backends.base import ChatMessage, TextRequest
from nhr.calls import Failure, call_model
from nhr.ids import derive_seed, stable_id
from nhr.parsing import ParseError, extract_json
from nhr.stages.base import StageContext, template

UNSPECIFIED_STYLE = "unspecified"

# Design calls sent at once (whole blocks: at least one, more while they fit): enough to keep
# a concurrent API busy (default 16 in flight), few enough that the requests in memory and the
# answers lost to a kill stay small.
ROUND_BATCHES = 64


def batch_operation(config, batch_index: int) -> str:
    cycle = config.brief.operation_cycle()
    return cycle[batch_index % len(cycle)]


def block_size(config) -> int:
    """Design batches per block: one per operation of the cycle."""
    return len(config.brief.operation_cycle())


def design_batches(config, prompts: int) -> int:
    """The batches a run of `prompts` prompts asks for when no item is dropped: whole blocks."""
    per_block = block_size(config) * config.design.batch_size
    return block_size(config) * math.ceil(prompts / per_block)


def design_request(ctx: StageContext, batch_index: int) -> TextRequest:
    config = ctx.config
    operation = taxonomy.get(batch_operation(config, batch_index))
    text = Template(template("design")).substitute(
        topic=config.brief.topic,
        styles=", ".join(config.brief.styles),
        operation=operation.key,
        guidance=operation.guidance,
        batch_size=config.design.batch_size,
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


def prompt_key(prompt: str) -> bytes:
    """What duplicate prompts share (their text, case aside), in 16 bytes: the set of every
    prompt of the run is the one thing design keeps in memory, ~80 bytes a prompt this way."""
    return hashlib.blake2b(prompt.lower().encode(), digest_size=16).digest()


class DesignStage:
    name = "design"
    reads: tuple[str, ...] = ()
    global_scope = True
    roles = ("designer",)

    @staticmethod
    def progress_total(config) -> tuple[int, str]:
        """What the design bar counts: prompts, not design calls."""
        return config.run.prompts, "prompt"

    def run(self, ctx: StageContext, shards: Any = None) -> Iterator[tuple[int, list[dict]]]:
        """Yields (shard, prompt rows) as each shard of `run.shard_size` prompts is complete,
        so its table is written before the next is designed (reads nothing: `shards` unused)."""
        config = ctx.config
        wanted = config.run.prompts
        block = block_size(config)
        per_block = block * config.design.batch_size
        max_batches = config.design.max_batches or 3 * design_batches(config, wanted) + block
        round_blocks = max(1, ROUND_BATCHES // block)
        model = ctx.model_info("designer")
        shard_rows: list[dict[str, Any]] = []  # the prompts of the shard being filled
        designed = 0  # prompts designed so far (rows past `wanted` are counted, not kept)
        seen_prompts: set[bytes] = set()  # prompt_key of every prompt so far
        next_batch = 0
        while designed < wanted and next_batch < max_batches:
            blocks = min(math.ceil((wanted - designed) / per_block), round_blocks)
            indices = list(range(next_batch, min(next_batch + blocks * block, max_batches)))
            next_batch = indices[-1] + 1
            answers = dict(zip(indices, self._answers(ctx, indices)))
            for start in range(indices[0], next_batch, block):
                batch_items = []
                for batch_index in range(start, min(start + block, next_batch)):
                    answer = answers[batch_index]
                    if isinstance(answer, Failure):
                        ctx.stats.fail(answer.reason)
                    else:
                        batch_items.append((batch_index, answer))
                for batch_index, item in interleave(batch_items):
                    row = self._row(ctx, batch_index, item, designed, seen_prompts, model)
                    if row is None:
                        continue
                    designed += 1
                    if row["prompt_index"] < wanted:
                        shard_rows.append(row)
                        ctx.progress(1)  # the design bar counts prompts (progress_total)
                    if len(shard_rows) == config.run.shard_size:
                        yield row["prompt_index"] // config.run.shard_size, shard_rows
                        shard_rows = []
        if shard_rows:
            yield shard_rows[0]["prompt_index"] // config.run.shard_size, shard_rows
        if designed < wanted:
            ctx.stats.fail("too_few_prompts", wanted - designed)
        kept = min(designed, wanted)
        if designed > kept:
            ctx.stats.drop("over_target", designed - kept)
        ctx.stats.rows_out = kept

    def _answers(self, ctx: StageContext, indices: list[int]) -> list[Any]:
        """Parsed answers per batch index, from checkpoints where a previous run got them."""
        answers: dict[int, Any] = {}
        missing = []
        for index in indices:
            saved = ctx.load_checkpoint(f"batch-{index:05d}")
            # an answer to another request (a run designed by an nhr that asked small runs for
            # fewer items) is not this batch's answer: asked again
            if saved is None or saved.get("asked") != ctx.config.design.batch_size:
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
        asked = ctx.config.design.batch_size
        for index, result in zip(missing, results):
            saved = {"failure": vars(result)} if isinstance(result, Failure) else {"items": result}
            ctx.save_checkpoint(f"batch-{index:05d}", {**saved, "asked": asked})
            answers[index] = result
        return [answers[index] for index in indices]

    def _row(self, ctx, batch_index, item, index, seen_prompts, model) -> dict | None:
        """The prompt row of one item, numbered `index`; None (dropped with a reason) for an
        unusable item or a prompt the run already has."""
        config = ctx.config
        operation = batch_operation(config, batch_index)
        ctx.stats.rows_in += 1
        cleaned = clean_item(item)
        if isinstance(cleaned, str):
            ctx.stats.drop(cleaned)
            return None
        prompt, edits = cleaned
        key = prompt_key(prompt)
        if key in seen_prompts:
            ctx.stats.drop("duplicate_prompt")
            return None
        seen_prompts.add(key)
        prompt_id = stable_id(config.run.seed, "prompt", index, prompt)
        return {
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


def interleave(batches: list[tuple[int, list[Any]]]) -> Iterator[tuple[int, Any]]:
    """(batch index, item) round-robin over a block's batches: every batch's first item, then
    every batch's second, ... (a batch that answered fewer items than B is passed over)."""
    longest = max((len(items) for _, items in batches), default=0)
    for rank in range(longest):
        for batch_index, items in batches:
            if rank < len(items):
                yield batch_index, items[rank]
