"""Stage 1 when the sources are the user's photos (`sources.kind: images`): design from photos.

It takes the place of `design` in the chain and keeps its contract: a global stage that
defines the shards (`run.shard_size` drawn photos each) and writes one prompt row per photo,
whose `prompt` is what the inverter, the backward filter and the gate read and whose `edits`
are what the scheduler reads. Per shard, in order:

1. the shard's items of the draw (nhr/sources.py: listed and sampled by the run seed) are read
   and normalised; the normalised photo is stored (`source_image`), a file that cannot be used
   keeps its reason (`source_reason`: corrupt_image, truncated_image, oversized_image,
   too_small, ...), counted, never raised;
2. the describer (a VLM, describe.txt) writes the photo's description, which stands in for
   the text-to-image prompt of a generated source;
3. the designer (design_image.txt) writes edits for that photo, with the brief's operations
   that fit what it shows; an edit naming an operation outside the brief is dropped.

Each shard's rows are checkpointed when complete, so a killed run never asks a model twice
for a shard it finished; the `generate` stage (nhr/stages/generate.py, PhotoSourceStage) then
turns each row into a source row with the photo's provenance. Every drawn item keeps a row,
so the run says what became of every file.
"""

from __future__ import annotations

from collections.abc import Iterator
from string import Template
from typing import Any

from nhr import taxonomy
from nhr.backends.base import ChatMessage, TextRequest, VisionRequest
from nhr.calls import Failure, call_model
from nhr.ids import derive_seed, stable_id
from nhr.parsing import ParseError, extract_json
from nhr.records import DROPPED, FAILED, OK
from nhr.sources import REJECT_REASONS, Entry, draw, normalise, open_source
from nhr.stages.base import StageContext, template
from nhr.stages.design import UNSPECIFIED_STYLE

DESCRIPTION_WORDS = 150  # a description longer than this is not one paragraph: re-asked
NO_FITTING_EDITS = "no_fitting_edits"
# Reasons a drawn item is dropped (what it is, not a model failing on it).
DROP_REASONS = (*REJECT_REASONS, NO_FITTING_EDITS)


def count_reason(stats: Any, reason: str | None) -> str:
    """Count one drawn item in `stats` by its `source_reason`; returns its status: ok (no
    reason), dropped (what the item is: DROP_REASONS) or failed (a model failing on it)."""
    if reason is None:
        stats.rows_out += 1
        return OK
    if reason in DROP_REASONS:
        stats.drop(reason)
        return DROPPED
    stats.fail(reason)
    return FAILED


def describe_request(ctx: StageContext, png: bytes, item_key: str) -> VisionRequest:
    text = Template(template("describe")).substitute(max_words=DESCRIPTION_WORDS)
    return VisionRequest(
        images=(png,),
        prompt=text,
        max_tokens=400,
        seed=derive_seed(ctx.config.run.seed, "describe", item_key),
    )


def clean_description(text: Any) -> str:
    """The description in a describer's answer, or ParseError with why it is unusable."""
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty answer", "empty_description")
    words = text.split()
    if words and words[0].lower().rstrip(":") == "description":
        words = words[1:]
    if not words:
        raise ParseError("empty answer", "empty_description")
    if len(words) > DESCRIPTION_WORDS:
        raise ParseError(f"{len(words)} words", "description_too_long")
    return " ".join(words)


def design_request(ctx: StageContext, description: str, item_key: str) -> TextRequest:
    config = ctx.config
    cycle = config.brief.operation_cycle()
    operations = list(dict.fromkeys(cycle))  # brief order; a weight w appears w times
    text = Template(template("design_image")).substitute(
        description=description,
        operations=", ".join(f"{op} (weight {cycle.count(op)})" for op in operations),
        max_edits=config.sources.edits_per_photo,
        guidance="\n".join(f"- {op}: {taxonomy.get(op).guidance}" for op in operations),
    )
    return TextRequest(
        messages=(ChatMessage("user", text),),
        temperature=config.design.temperature,
        seed=derive_seed(config.run.seed, "design-photo", item_key),
    )


def parse_edits(text: str) -> list[Any]:
    """The designer's JSON array (empty when no operation fits the photo)."""
    return extract_json(text, expect=list)


def clean_edits(items: list[Any], operations: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """(usable edits, a reason for each unusable item)."""
    edits: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("instruction"), str):
            problems.append("edit_not_object")
            continue
        operation = item.get("operation")
        if operation not in operations:
            problems.append("off_brief_operation")
            continue
        instruction = " ".join(item["instruction"].split())
        if not instruction or instruction.lower() in seen:
            problems.append("duplicate_edit" if instruction else "empty_edit")
            continue
        seen.add(instruction.lower())
        edits.append(
            {
                "instruction": instruction,
                "operation": operation,
                "composite": bool(item.get("composite", False)),
            }
        )
    return edits, problems


def _stored(ctx: StageContext, rows: list[dict[str, Any]]) -> bool:
    """Whether every photo of a checkpointed shard is still in the image store, intact."""
    from nhr.store import DamagedImageError

    try:
        for row in rows:
            if row["source_image"] is not None:
                ctx.images.get(row["source_image"])
    except DamagedImageError:
        return False
    return True


class PhotoDesignStage:
    name = "design"
    reads: tuple[str, ...] = ()
    global_scope = True
    roles = ("describer", "designer")

    def run(self, ctx: StageContext, shards: Any = None) -> Iterator[tuple[int, list[dict]]]:
        """Yields (shard, prompt rows), one row per drawn item, shard by shard."""
        config = ctx.config
        sources = config.sources
        listing = open_source(sources.path or "", sources.column, sources.license_column)
        drawn = draw(listing, config.run.seed, sources.sample)
        size = config.run.shard_size
        for start in range(0, len(drawn), size):
            shard = start // size
            indices = drawn[start : start + size]
            keys = [listing.key(i) for i in indices]
            saved = ctx.load_checkpoint(f"shard-{shard:05d}")
            # a checkpoint is only good for the same items (the folder may have changed) and
            # while its photos are in the image store (`nhr verify` deletes damaged ones)
            if saved is None or saved.get("keys") != keys or not _stored(ctx, saved["rows"]):
                rows = self._shard(ctx, listing, indices, start)
                ctx.save_checkpoint(f"shard-{shard:05d}", {"keys": keys, "rows": rows})
            else:
                rows = saved["rows"]
            self._count(ctx, rows)
            ctx.progress(len(rows))
            yield shard, rows

    @staticmethod
    def _count(ctx: StageContext, rows: list[dict[str, Any]]) -> None:
        """The stage's counters from its rows (the same whether a shard was mined now or
        came back from its checkpoint)."""
        for row in rows:
            ctx.stats.rows_in += 1
            count_reason(ctx.stats, row["source_reason"])
            for problem in row.pop("edit_problems", None) or []:
                ctx.stats.drop(problem)

    def _shard(
        self, ctx: StageContext, listing: Any, indices: list[int], first: int
    ) -> list[dict[str, Any]]:
        config = ctx.config
        sources = config.sources
        keys = [listing.key(i) for i in indices]
        entries: list[Entry] = listing.read(indices)
        rows: list[dict[str, Any]] = []
        photos: dict[int, bytes] = {}  # position in the shard -> normalised PNG
        for position, (key, entry) in enumerate(zip(keys, entries)):
            index = first + position
            row = {
                "prompt_id": stable_id(config.run.seed, "photo", index, key),
                "prompt_index": index,
                "prompt": None,
                "operation": None,
                "style": UNSPECIFIED_STYLE,
                "edits": [],
                "design_batch": None,
                "model": None,
                "source_image": None,
                "source_reason": entry.reason,
                "describer_model": None,
                "origin": listing.origin,
                "origin_file": entry.file,
                "origin_row": entry.row,
                "license": entry.license,
            }
            rows.append(row)
            if entry.reason is not None:
                continue
            photo = normalise(
                entry.data, config.generate.buckets, sources.min_side, sources.max_pixels
            )
            if isinstance(photo, str):
                row["source_reason"] = photo
                continue
            row["source_image"] = ctx.images.put(photo.png)
            photos[position] = photo.png
        described = self._describe(ctx, photos, keys, rows)
        self._design(ctx, described, keys, rows)
        return rows

    def _describe(
        self, ctx: StageContext, photos: dict[int, bytes], keys: list[str], rows: list[dict]
    ) -> dict[int, str]:
        positions = sorted(photos)
        results = call_model(
            ctx.backend("describer").ask,
            [describe_request(ctx, photos[p], keys[p]) for p in positions],
            batch_size=ctx.config.sources.batch_size,
            retry=ctx.config.retry,
            stats=ctx.stats,
            parse=clean_description,
        )
        described = {}
        model = ctx.model_info("describer") if positions else None
        for position, result in zip(positions, results):
            rows[position]["describer_model"] = model
            if isinstance(result, Failure):
                rows[position]["source_reason"] = f"describe_{result.reason}"
            else:
                rows[position]["prompt"] = result
                described[position] = result
        return described

    def _design(
        self, ctx: StageContext, described: dict[int, str], keys: list[str], rows: list[dict]
    ) -> None:
        config = ctx.config
        positions = sorted(described)
        results = call_model(
            ctx.backend("designer").chat,
            [design_request(ctx, described[p], keys[p]) for p in positions],
            batch_size=len(positions) or 1,
            retry=config.retry,
            stats=ctx.stats,
            parse=parse_edits,
        )
        model = ctx.model_info("designer") if positions else None
        operations = set(config.brief.operation_cycle())
        for position, result in zip(positions, results):
            row = rows[position]
            row["model"] = model
            if isinstance(result, Failure):
                row["source_reason"] = f"design_{result.reason}"
                continue
            edits, problems = clean_edits(result, operations)
            row["edit_problems"] = problems
            if not edits:
                row["source_reason"] = NO_FITTING_EDITS
                continue
            row["operation"] = edits[0]["operation"]
            row["edits"] = [
                {"edit_id": stable_id(row["prompt_id"], "edit", k, edit["instruction"]), **edit}
                for k, edit in enumerate(edits)
            ]
