"""Stage 8, select: at most one forward triplet per (source image, instruction).

`select.best_of: pointwise` (the paper's rule): the kept candidate has the highest geometric
mean sqrt(adherence * aesthetics) among those that passed the validator (ties broken by id,
for determinism). `pairwise`: the validator compares every two passing candidates of a group
side by side (prompts/pairwise.txt: the original, edit A, edit B), once in each order so that
a judge's preference for the first or the second position cancels; the candidate with the most
wins is kept (a tie answer is half a win each; equal wins: geometric mean, then id). A group
any of whose comparisons failed falls back to the pointwise rule (its forward triplet is kept
all the same); each failed comparison is counted among the stage's failed items with its
reason (`comparison_<reason>`), so `nhr status` shows them.

Every group also records how many editor attempts it took and how many passed: a difficulty
signal per pair, kept even for groups where nothing passed.
"""

from __future__ import annotations

import math
from itertools import combinations
from string import Template
from typing import Any

from nhr import taxonomy
from nhr.backends.base import VisionRequest
from nhr.calls import Failure, LazyRequests, call_model
from nhr.ids import stable_id
from nhr.parsing import ParseError, extract_json
from nhr.records import DROPPED, OK
from nhr.stages.base import StageContext, template

PAIRWISE = "pairwise"
TIE = "tie"


def geometric_mean(adherence: float, aesthetics: float) -> float:
    return math.sqrt(adherence * aesthetics)


def pointwise(scores: dict[str, dict[str, Any]], candidate: dict[str, Any]) -> tuple[float, str]:
    """The pointwise rank of a passing candidate: its geometric mean, then its id."""
    row = scores[candidate["candidate_id"]]
    return geometric_mean(row["adherence"], row["aesthetics"]), candidate["candidate_id"]


def parse_preference(text: str) -> str:
    """The answer to prompts/pairwise.txt: "A", "B" or TIE (a judge that will not choose)."""
    data = extract_json(text, expect=dict)
    value = data.get("BetterEdit")
    if not isinstance(value, str):
        raise ParseError(f"no BetterEdit in answer: {str(text)[:80]!r}")
    choice = value.strip().strip(".").strip().upper()
    if choice in ("A", "B"):
        return choice
    if choice in ("TIE", "EQUAL", "BOTH", "NEITHER"):
        return TIE
    raise ParseError(f"BetterEdit is neither A nor B: {value!r}")


def comparison_requests(
    ctx: StageContext, comparisons: list[tuple[dict[str, Any], dict[str, Any]]]
) -> LazyRequests:
    """One request per (first, second) candidate pair: the original, then first as edit A and
    second as edit B. Greedy (temperature 0): each order is its own request."""
    text = Template(template("pairwise"))
    max_tokens = ctx.config.select.max_tokens

    def build(index: int) -> VisionRequest:
        first, second = comparisons[index]
        return VisionRequest(
            images=(
                ctx.images.get(first["source_image"]),
                ctx.images.get(first["edited_image"]),
                ctx.images.get(second["edited_image"]),
            ),
            prompt=text.substitute(instruction=first["instruction"]),
            max_tokens=max_tokens,
        )

    return LazyRequests(len(comparisons), build)


def pairwise_wins(
    ctx: StageContext, groups: list[list[dict[str, Any]]]
) -> list[dict[str, float] | Failure]:
    """Per group of passing candidates: wins by candidate id over all its comparisons (both
    orders of every two candidates), or the Failure of its first failed comparison. Groups of
    one candidate need no comparison. All comparisons go to the validator in one batched call."""
    comparisons: list[tuple[dict[str, Any], dict[str, Any]]] = []
    owners: list[int] = []
    for number, members in enumerate(groups):
        ordered = sorted(members, key=lambda m: m["candidate_id"])
        for a, b in combinations(ordered, 2):
            comparisons += [(a, b), (b, a)]
            owners += [number, number]
    answers = call_model(
        ctx.backend("validator").ask,
        comparison_requests(ctx, comparisons),
        batch_size=ctx.config.select.batch_size,
        retry=ctx.config.retry,
        stats=ctx.stats,
        parse=parse_preference,
    )
    results: list[dict[str, float] | Failure] = [
        {m["candidate_id"]: 0.0 for m in members} for members in groups
    ]
    for (first, second), owner, answer in zip(comparisons, owners, answers):
        if isinstance(answer, Failure):
            ctx.stats.fail(f"comparison_{answer.reason}")
            if not isinstance(results[owner], Failure):
                results[owner] = answer
            continue
        wins = results[owner]
        if isinstance(wins, Failure):
            continue
        if answer == TIE:
            wins[first["candidate_id"]] += 0.5
            wins[second["candidate_id"]] += 0.5
        else:
            wins[(first if answer == "A" else second)["candidate_id"]] += 1.0
    return results


class SelectStage:
    name = "select"
    reads = ("edit", "validate")
    global_scope = False
    roles: tuple[str, ...] = ()

    def __init__(self, config: Any = None) -> None:
        if config is not None and config.select.best_of == PAIRWISE:
            self.roles = ("validator",)  # the validator compares the candidates

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        scores = {row["candidate_id"]: row for row in inputs["validate"] if row["status"] == OK}
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for candidate in inputs["edit"]:
            groups.setdefault((candidate["source_id"], candidate["edit_id"]), []).append(candidate)
        ctx.stats.rows_in = len(scores)
        pairwise = ctx.config.select.best_of == PAIRWISE
        passing = {
            key: [m for m in members if m["candidate_id"] in scores]
            for key, members in groups.items()
        }
        wins: dict[tuple[str, str], dict[str, float] | Failure] = {}
        if pairwise:
            contested = [key for key, passed in passing.items() if len(passed) > 1]
            wins = dict(zip(contested, pairwise_wins(ctx, [passing[k] for k in contested])))
        rows = []
        for (source_id, edit_id), members in groups.items():
            passed = passing[(source_id, edit_id)]
            first = members[0]
            row = {
                "triplet_id": None,
                "kind": "forward",
                "prompt_id": first["prompt_id"],
                "source_id": source_id,
                "edit_id": edit_id,
                "candidate_id": None,
                "source_image": first["source_image"],
                "edited_image": None,
                "instruction": first["instruction"],
                "operation": first["operation"],
                "category": taxonomy.get(first["operation"]).label,
                "composite": first["composite"],
                "width": first["width"],
                "height": first["height"],
                "adherence": None,
                "aesthetics": None,
                "score": None,
                "attempts": len(members),
                "passes": len(passed),
                "parents": [],
                "status": DROPPED,
                "reason": "no_candidate_passed",
            }
            if passed:
                group_wins = wins.get((source_id, edit_id))
                if isinstance(group_wins, dict):
                    best = max(
                        passed,
                        key=lambda m: (group_wins[m["candidate_id"]], *pointwise(scores, m)),
                    )
                else:  # pointwise, one passing candidate, or a group whose comparisons failed
                    best = max(passed, key=lambda m: pointwise(scores, m))
                chosen = scores[best["candidate_id"]]
                row.update(
                    triplet_id=stable_id("forward", best["candidate_id"]),
                    candidate_id=best["candidate_id"],
                    edited_image=best["edited_image"],
                    adherence=chosen["adherence"],
                    aesthetics=chosen["aesthetics"],
                    score=geometric_mean(chosen["adherence"], chosen["aesthetics"]),
                    parents=[best["candidate_id"]],
                    status=OK,
                    reason=None,
                )
                ctx.stats.rows_out += 1
                ctx.stats.drop("not_best", len(passed) - 1)
            rows.append(row)
        ctx.progress(len(inputs["edit"]))
        return rows
