"""Stage 11, compose: two accepted edits of one source give a composite triplet.

    <edited 1, inverse(instruction 1) + " and " + instruction 2, edited 2>

with category "A & B" (the inverse of edit 1's operation, then edit 2's). Ordered pairs, one or
both directions, at most `max_per_source` pairs per source (a seeded random subset).

Two edits are composed only when they are independent (`composable`): neither is a composite
the designer wrote (it already combines other edits of the same prompt, so pairing it with
one of them would name an object twice: "put the basket back and remove the basket, the chair
and the teapot"), they do not set the same global attribute, and they do not name the same
thing (one would act on what the other changed, or undo it).

By default composites are re-validated, since two correct halves do not always make a correct
whole. Every candidate that passed the validator is an accepted edit, not only the best one
kept per pair, so a pair of edits can be composed from several candidate images: up to
`tries_per_pair` combinations are scored, best-scored parents first, in rounds that stop for a
pair as soon as one passes. The first passing combination is the composite.
"""

from __future__ import annotations

import re
from typing import Any

from nhr import taxonomy
from nhr.calls import Failure
from nhr.ids import stable_id, unit_interval
from nhr.records import DROPPED, FAILED, OK
from nhr.stages.base import StageContext
from nhr.stages.select import geometric_mean
from nhr.stages.validate import passes, validator_scores


def join_instructions(first: str, second: str) -> str:
    first = first.strip().rstrip(".!")
    second = second.strip()
    if second[:1].isupper() and not second[1:2].isupper():  # keep "TV", lower "Make"
        second = second[0].lower() + second[1:]
    return f"{first} and {second}"


def conflicting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two global edits of the same kind ("make it sunset" + "make it night") set the same
    scene attribute, so their composite instruction would contradict itself."""
    return a["operation"] == b["operation"] and taxonomy.get(a["operation"]).is_global


# Words that never name the thing an edit acts on: grammar, edit verbs, places in the frame,
# colours, sizes and materials (which qualify a thing). What is left of an instruction names
# its objects; a shared word means two edits may touch the same object. Deliberately
# conservative: a composite wrongly skipped costs one augmented row, a wrong one teaches a
# model nonsense.
_NOT_THINGS = frozenset(
    """
    a an the and or then also please can could you it its them they this that these those all
    both each of to from with for in into on onto at near by over under above below behind
    beside next between out up down off away back instead
    remove get rid take erase delete lose add put place insert replace swap turn change make
    paint recolour recolor colour color give move shift slide relocate scale enlarge shrink
    left right top bottom middle center centre side corner upper lower front edge
    bigger smaller larger large small medium medium-sized tiny huge big much lot little more less
    red orange yellow green blue purple pink brown black white gray grey teal gold silver beige
    plain striped dotted polka-dot checkered wooden wood metal metallic glass pattern finish
    material picture image photo scene
    """.split()
)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def named_things(instruction: str) -> set[str]:
    """The words of an instruction that may name the objects it acts on (singular)."""
    words = set()
    for word in _WORD.findall(instruction.lower()):
        if word in _NOT_THINGS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return words


def composable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether forward triplets `a` and `b` of one source make a sound composite."""
    if a["composite"] or b["composite"] or conflicting(a, b):
        return False
    return not named_things(a["instruction"]) & named_things(b["instruction"])


def accepted_images(inputs: dict[str, Any]) -> dict[tuple[str, str], list[tuple[float, str, str]]]:
    """(source, edit) -> [(score, candidate id, edited image)] of every candidate that passed
    the validator, best first."""
    scores = {v["candidate_id"]: v for v in inputs["validate"] if v["status"] == OK}
    accepted: dict[tuple[str, str], list[tuple[float, str, str]]] = {}
    for c in inputs["edit"]:
        v = scores.get(c["candidate_id"])
        if v is not None:
            score = geometric_mean(v["adherence"], v["aesthetics"])
            accepted.setdefault((c["source_id"], c["edit_id"]), []).append(
                (score, c["candidate_id"], c["edited_image"])
            )
    for images in accepted.values():
        images.sort(key=lambda item: (-item[0], item[1]))
    return accepted


class ComposeStage:
    name = "compose"
    global_scope = False
    roles = ("validator",)

    def __init__(self, previous: str) -> None:
        self.previous = previous
        self.reads = ("edit", "validate", previous)

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        settings = ctx.config.compose
        triplets = inputs[self.previous]
        inverse_of = {
            t["parents"][0]: t["instruction"]
            for t in triplets
            if t["kind"] == "inverse" and t["status"] == OK
        }
        by_source: dict[str, list[dict[str, Any]]] = {}
        for t in triplets:
            if t["kind"] == "forward" and t["status"] == OK:
                by_source.setdefault(t["source_id"], []).append(t)
        pairs = []
        for _, forwards in sorted(by_source.items()):
            made = [
                (a, b)
                for a in forwards
                for b in forwards
                if a is not b
                and a["triplet_id"] in inverse_of
                and composable(a, b)
                and (settings.both_directions or a["triplet_id"] < b["triplet_id"])
            ]
            if settings.max_per_source is not None:
                made.sort(
                    key=lambda p: unit_interval(
                        ctx.config.run.seed, "compose", p[0]["triplet_id"], p[1]["triplet_id"]
                    )
                )
                made = made[: settings.max_per_source]
            pairs.extend(sorted(made, key=lambda p: (p[0]["triplet_id"], p[1]["triplet_id"])))
        ctx.stats.rows_in = len(pairs)
        accepted = accepted_images(inputs) if settings.revalidate else {}
        tries = []  # per pair: the candidate composites to score, in order
        for a, b in pairs:
            options = [(a["edited_image"], b["edited_image"])]
            if settings.revalidate:
                images_a = [img for _, _, img in accepted.get((a["source_id"], a["edit_id"]), [])]
                images_b = [img for _, _, img in accepted.get((b["source_id"], b["edit_id"]), [])]
                combos = [
                    (x, y)
                    for x in images_a or [a["edited_image"]]
                    for y in images_b or [b["edited_image"]]
                ]
                combos.sort(
                    key=lambda xy: (
                        images_a.index(xy[0]) + images_b.index(xy[1])
                        if xy[0] in images_a and xy[1] in images_b
                        else 0
                    )
                )
                options = combos[: settings.tries_per_pair]
            tries.append(
                [self._composite(a, b, inverse_of[a["triplet_id"]], x, y) for x, y in options]
            )
        if not settings.revalidate:
            composites = [options[0] for options in tries]
            ctx.stats.rows_out = len(composites)
            return triplets + composites
        return triplets + self._revalidate(ctx, tries)

    @staticmethod
    def _composite(a: dict, b: dict, inverse_a: str, image_a: str, image_b: str) -> dict[str, Any]:
        first_operation = taxonomy.inverse_of(a["operation"])
        return {
            **b,
            "triplet_id": stable_id(
                "composite", a["triplet_id"], b["triplet_id"], image_a, image_b
            ),
            "kind": "composite",
            "source_image": image_a,
            "edited_image": image_b,
            "instruction": join_instructions(inverse_a, b["instruction"]),
            "operation": f"{first_operation}+{b['operation']}",
            "category": taxonomy.composite_label(first_operation, b["operation"]),
            "composite": True,
            "adherence": None,
            "aesthetics": None,
            "score": None,
            "attempts": None,
            "passes": None,
            "parents": [a["triplet_id"], b["triplet_id"]],
            "status": OK,
            "reason": None,
        }

    def _revalidate(
        self, ctx: StageContext, tries: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Score each pair's options round by round; a pair stops at its first pass."""
        scored: list[dict[str, Any]] = []
        pending = list(range(len(tries)))
        for round_index in range(max((len(t) for t in tries), default=0)):
            batch = [tries[p][round_index] for p in pending if round_index < len(tries[p])]
            owners = [p for p in pending if round_index < len(tries[p])]
            results = validator_scores(
                ctx, batch, ctx.config.compose.batch_size, on_done=ctx.progress
            )
            still_pending = []
            for owner, composite, result in zip(owners, batch, results):
                scored.append(composite)
                last_try = round_index == len(tries[owner]) - 1
                if isinstance(result, Failure):
                    composite.update(status=FAILED, reason=result.reason)
                    if last_try:
                        ctx.stats.fail(result.reason)
                    else:
                        still_pending.append(owner)
                    continue
                adherence, aesthetics = result
                composite.update(
                    adherence=adherence,
                    aesthetics=aesthetics,
                    score=geometric_mean(adherence, aesthetics),
                )
                if passes(ctx, adherence, aesthetics):
                    ctx.stats.rows_out += 1
                else:
                    composite.update(status=DROPPED, reason="composite_rejected")
                    if last_try:
                        ctx.stats.drop("composite_rejected")
                    else:
                        still_pending.append(owner)
            pending = still_pending
        return sorted(scored, key=lambda c: c["triplet_id"])
