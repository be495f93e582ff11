"""Stage 6, pre-filter: cheap, soft checks before the expensive validator.

Checks run cheapest first and a candidate stops at the first one it fails, so no model call
is spent on an edit already known to be bad:
  d) low-level pixel check (docs/method.md §3): near no-ops, and scattered changes with no
     coherent edited region (skipped for global operations, which change every pixel);
  a) VLM adherence/aesthetics scores with the validator's prompt, against soft thresholds;
  b) VLM yes/no: no unwanted changes beyond the instruction;
  c) VLM yes/no: the edited image is pleasing.
The reference table reports the VLM checks before the low-level one; the set of survivors is
the same in either order, only the attribution of a candidate failing both differs.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

# Threads decoding images for the pixel check; each holds two decoded images (~6 MB at 1 MP).
MAX_DECODE_THREADS = 8


@dataclass(frozen=True)
class LowLevelResult:
    changed_share: float
    largest_component_share: float
    reason: str | None  # None: passed


def low_level_check(
    source: np.ndarray, edited: np.ndarray, check: LowLevelCheck, component_rule: bool = True
) -> LowLevelResult:
    """docs/method.md §3 on two RGB uint8 arrays of the same shape.

    D = max over channels of |edited - source|. No-op: fewer than `min_changed_share` of the
    pixels change by more than `noop_threshold` (a generous bound on re-encoding noise, so a
    faint but real edit, say a recolouring in a night scene, is not mistaken for a no-op).
    Component rule: changed = D > `diff_threshold`; the largest 4-connected component of
    `changed` must hold at least `min_component_share` of the changed pixels.
    """
    from scipy import ndimage

    if source.shape != edited.shape:
        return LowLevelResult(1.0, 0.0, "size_mismatch")
    diff = channel_max_difference(source, edited)
    changed = diff > check.diff_threshold
    changed_count = np.count_nonzero(changed)
    changed_share = changed_count / changed.size
    if np.count_nonzero(diff > check.noop_threshold) / diff.size < check.min_changed_share:
        return LowLevelResult(changed_share, 1.0 if changed_count else 0.0, "no_op")
    if not changed_count:  # a faint edit: nothing strong enough to judge its shape
        return LowLevelResult(0.0, 0.0, None)
    # Components never cross the bounding box of the changed pixels, so labelling the box
    # gives the same components as the whole image, at a fraction of the cost for a local edit.
    rows = np.flatnonzero(changed.any(axis=1))
    columns = np.flatnonzero(changed.any(axis=0))
    box = changed[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    labels, count = ndimage.label(box)  # default structure = 4-connectivity in 2-D
    largest = changed_count if count == 1 else int(np.bincount(labels.ravel())[1:].max())
    largest_share = largest / changed_count
    if component_rule and largest_share < check.min_component_share:
        return LowLevelResult(changed_share, largest_share, "scattered_changes")
    return LowLevelResult(changed_share, largest_share, None)


def channel_max_difference(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """D = max over channels of |edited - source|, as uint8 (H, W).

    Computed in uint8 (max - min never overflows) and over the channels one by one: numpy's
    reduction over a short last axis is about ten times slower at 1 MP.
    """
    difference = np.maximum(source, edited)
    np.subtract(difference, np.minimum(source, edited), out=difference)
    if difference.ndim == 2:
        return difference
    largest = difference[:, :, 0].copy()
    for channel in range(1, difference.shape[2]):
        np.maximum(largest, difference[:, :, channel], out=largest)
    return largest


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
            self._low_level_all(ctx, candidates, rows)
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

    def _low_level_all(self, ctx: StageContext, candidates: list[dict], rows: list[dict]) -> None:
        """The pixel check of every candidate, each source decoded once for all its edits.

        At 1 MP, decoding the PNGs is most of the framework's cost per candidate; PIL and numpy
        release the GIL while they work, so sources are checked on one thread per CPU. Each
        candidate's result goes to its own row, so the outcome does not depend on the order.
        """
        by_source: dict[str, list[int]] = {}
        for index, candidate in enumerate(candidates):
            by_source.setdefault(candidate["source_image"], []).append(index)
        read = ctx.images.get  # thread-safe: the store guards its own state

        def check_source(indices: list[int]) -> None:
            try:
                source = load_rgb(read(candidates[indices[0]]["source_image"]))
            except (OSError, ValueError):
                for index in indices:
                    rows[index].update(status=FAILED, reason="unreadable_image")
                return
            for index in indices:
                self._low_level(ctx, candidates[index], rows[index], source, read)

        workers = min(len(by_source), os.cpu_count() or 1, MAX_DECODE_THREADS)
        if workers <= 1:
            for indices in by_source.values():
                check_source(indices)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="nhr-pixels") as pool:
            for _ in pool.map(check_source, by_source.values()):
                pass  # re-raises a worker's exception (a damaged image stops the stage)

    def _low_level(self, ctx, candidate: dict, row: dict, source: np.ndarray, read) -> None:
        check = ctx.config.prefilter.low_level
        try:
            edited = load_rgb(read(candidate["edited_image"]))
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
