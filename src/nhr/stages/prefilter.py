"""Stage 6, pre-filter: cheap, soft checks before the expensive validator.

Checks run cheapest first and a candidate stops at the first one it fails, so no model call
is spent on an edit already known to be bad:
  d) low-level pixel check (NHR-METHOD §3): near no-ops, and scattered changes with no
     coherent edited region (skipped for global operations, which change every pixel);
  a) VLM adherence/aesthetics scores with the validator's prompt, against soft thresholds;
  b) VLM yes/no: no unwanted changes beyond the instruction;
  c) VLM yes/no: the edited image is pleasing.
The reference table reports the VLM checks before the low-level one; the set of survivors is
the same in either order, only the attribution of a candidate failing both differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from string import Template
from typing import Any

import numpy as np

from nhr import taxonomy
from nhr.backends.base import VisionRequest
from nhr.calls import Failure, LazyRequests, call_model
from nhr.config import LowLevelCheck
from nhr.parsing import parse_scores, parse_yes_no
from nhr.records import DROPPED, FAILED, OK
from nhr.stages.base import StageContext, load_rgb, ok_rows, template


@dataclass(frozen=True)
class LowLevelResult:
    changed_share: float
    largest_component_share: float
    reason: str | None  # None: passed


def low_level_check(
    source: np.ndarray, edited: np.ndarray, check: LowLevelCheck, component_rule: bool = True
) -> LowLevelResult:
    """NHR-METHOD §3 on two RGB uint8 arrays of the same shape.

    D = max over channels of |edited - source|. No-op: fewer than `min_changed_share` of the
    pixels change by more than `noop_threshold` (a generous bound on re-encoding noise, so a
    faint but real edit, say a recolouring in a night scene, is not mistaken for a no-op).
    Component rule: changed = D > `diff_threshold`; the largest 4-connected component of
    `changed` must hold at least `min_component_share` of the changed pixels.
    """
    from scipy import ndimage

    if source.shape != edited.shape:
        return LowLevelResult(1.0, 0.0, "size_mismatch")
    diff = np.abs(edited.astype(np.int16) - source.astype(np.int16)).max(axis=2)
    changed = diff > check.diff_threshold
    changed_count = int(changed.sum())
    changed_share = changed_count / changed.size
    if float((diff > check.noop_threshold).mean()) < check.min_changed_share:
        return LowLevelResult(changed_share, 1.0 if changed_count else 0.0, "no_op")
    if not changed_count:  # a faint edit: nothing strong enough to judge its shape
        return LowLevelResult(0.0, 0.0, None)
    labels, count = ndimage.label(changed)  # default structure = 4-connectivity in 2-D
    largest_share = int(np.bincount(labels.ravel())[1:].max()) / changed_count
    if component_rule and largest_share < check.min_component_share:
        return LowLevelResult(changed_share, largest_share, "scattered_changes")
    return LowLevelResult(changed_share, largest_share, None)


def component_rule_applies(operation: str, check: LowLevelCheck) -> bool:
    if check.skip_operations is not None:
        return operation not in check.skip_operations
    return not taxonomy.get(operation).is_global


class PrefilterStage:
    name = "prefilter"
    reads = ("edit",)
    global_scope = False
    roles = ("prefilter",)

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        settings = ctx.config.prefilter
        candidates = ok_rows(inputs["edit"])
        ctx.stats.rows_in = len(candidates)
        model = ctx.model_info("prefilter") if _uses_model(settings) else None
        rows = [
            {
                "candidate_id": c["candidate_id"],
                "changed_share": None,
                "largest_component_share": None,
                "adherence": None,
                "aesthetics": None,
                "no_unwanted_changes": None,
                "pleasing": None,
                "status": OK,
                "reason": None,
                "model": model,
            }
            for c in candidates
        ]
        if settings.low_level.enabled:
            # Candidates of one source are consecutive; decode each source once, not M x edits.
            decode_source = lru_cache(maxsize=8)(lambda digest: load_rgb(ctx.images.get(digest)))
            for candidate, row in zip(candidates, rows):
                self._low_level(ctx, candidate, row, decode_source)
        if settings.score:
            self._ask(ctx, candidates, rows, "score", self._score_decision)
        if settings.unwanted_changes:
            self._ask(ctx, candidates, rows, "unwanted", self._unwanted_decision)
        if settings.aesthetics:
            self._ask(ctx, candidates, rows, "aesthetic", self._aesthetic_decision)
        for row in rows:
            if row["status"] == OK:
                ctx.stats.rows_out += 1
            elif row["status"] == DROPPED:
                ctx.stats.drop(row["reason"])
            else:
                ctx.stats.fail(row["reason"])
        ctx.progress(len(candidates))
        return rows

    def _low_level(self, ctx: StageContext, candidate: dict, row: dict, decode_source) -> None:
        check = ctx.config.prefilter.low_level
        try:
            source = decode_source(candidate["source_image"])
            edited = load_rgb(ctx.images.get(candidate["edited_image"]))
        except (OSError, ValueError):
            row.update(status=FAILED, reason="unreadable_image")
            return
        result = low_level_check(
            source, edited, check, component_rule_applies(candidate["operation"], check)
        )
        row["changed_share"] = result.changed_share
        row["largest_component_share"] = result.largest_component_share
        if result.reason:
            row.update(status=DROPPED, reason=result.reason)

    def _ask(self, ctx, candidates, rows, task, decide) -> None:
        pending = [i for i, row in enumerate(rows) if row["status"] == OK]
        text = Template(template(task))

        def build(k: int) -> VisionRequest:
            candidate = candidates[pending[k]]
            edited = ctx.images.get(candidate["edited_image"])
            prompt = text.substitute(instruction=candidate["instruction"])
            if task == "aesthetic":
                return VisionRequest(images=(edited,), prompt=prompt, max_tokens=8)
            source = ctx.images.get(candidate["source_image"])
            return VisionRequest(images=(source, edited), prompt=prompt, max_tokens=64)

        parse = parse_scores if task == "score" else parse_yes_no
        answers = call_model(
            ctx.backend("prefilter").ask,
            LazyRequests(len(pending), build),
            batch_size=ctx.config.prefilter.batch_size,
            retry=ctx.config.retry,
            stats=ctx.stats,
            parse=parse,
        )
        for index, answer in zip(pending, answers):
            row = rows[index]
            if isinstance(answer, Failure):
                row.update(status=FAILED, reason=f"{task}_{answer.reason}")
            else:
                decide(ctx, row, answer)

    @staticmethod
    def _score_decision(ctx, row, scores) -> None:
        row["adherence"], row["aesthetics"] = scores
        settings = ctx.config.prefilter
        if scores[0] < settings.min_adherence or scores[1] < settings.min_aesthetics:
            row.update(status=DROPPED, reason="low_prefilter_scores")

    @staticmethod
    def _unwanted_decision(ctx, row, clean: bool) -> None:
        row["no_unwanted_changes"] = clean
        if not clean:
            row.update(status=DROPPED, reason="unwanted_changes")

    @staticmethod
    def _aesthetic_decision(ctx, row, pleasing: bool) -> None:
        row["pleasing"] = pleasing
        if not pleasing:
            row.update(status=DROPPED, reason="not_pleasing")


def _uses_model(settings) -> bool:
    return settings.score or settings.unwanted_changes or settings.aesthetics
