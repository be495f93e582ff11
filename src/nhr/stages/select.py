"""Stage 8, select: at most one forward triplet per (source image, instruction).

The kept candidate has the highest geometric mean sqrt(adherence * aesthetics) among those
that passed the validator (ties broken by id, for determinism). Every group also records how
many editor attempts it took and how many passed: a difficulty signal per pair, kept even for
groups where nothing passed.
"""

from __future__ import annotations

import math
from typing import Any

from nhr import taxonomy
from nhr.ids import stable_id
from nhr.records import DROPPED, OK
from nhr.stages.base import StageContext


def geometric_mean(adherence: float, aesthetics: float) -> float:
    return math.sqrt(adherence * aesthetics)


class SelectStage:
    name = "select"
    reads = ("edit", "validate")
    global_scope = False
    roles: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        scores = {row["candidate_id"]: row for row in inputs["validate"] if row["status"] == OK}
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for candidate in inputs["edit"]:
            groups.setdefault((candidate["source_id"], candidate["edit_id"]), []).append(candidate)
        ctx.stats.rows_in = len(scores)
        rows = []
        for (source_id, edit_id), members in groups.items():
            passed = [m for m in members if m["candidate_id"] in scores]
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
                best = max(
                    passed,
                    key=lambda m: (
                        geometric_mean(
                            scores[m["candidate_id"]]["adherence"],
                            scores[m["candidate_id"]]["aesthetics"],
                        ),
                        m["candidate_id"],
                    ),
                )
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
