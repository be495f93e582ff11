"""What every stage of a run rejected, with the reason and the scores that decided it.

Nothing here knows the stage list: the stages are those of the run's statistics, in order, and
each table is read for rows whose status is not "ok". Triplet tables carry the rows of the
stage before them (a row dropped by select is still in the compose table), so a row counts as
rejected by the first stage whose table shows it rejected. Best-of losers are not rows of any
table (select keeps one row per pair): they are the validated candidates select did not keep.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nhr.analysis.survival import LOW_LEVEL_REASONS
from nhr.ids import unit_interval
from nhr.records import OK

# Readable words for the reasons the stages record; an unknown reason is shown as it is.
REASONS = {
    "implausible": "the gate found the source implausible or not what the prompt asked",
    "no_op": "no-op: the edit changed no pixel",
    "scattered_changes": "the changes are scattered noise, not one edited region",
    "size_mismatch": "the edited image has another size than the source",
    "low_prefilter_scores": "pre-filter scores below its thresholds",
    "unwanted_changes": "the pre-filter saw changes the instruction did not ask for",
    "not_pleasing": "the pre-filter found the edited image not pleasing",
    "below_threshold": "validator scores below the threshold",
    "category_excluded": "the category is excluded (validate.thresholds)",
    "not_best": "passed, but another candidate of the pair scored higher (best-of loser)",
    "no_candidate_passed": "none of the pair's candidates passed the validator",
    "backward_inconsistent": "the inverse edit failed the validator (backward-consistency)",
    "inverse_unavailable": "no inverse could be written or judged, so it was never checked",
    "parent_dropped": "a triplet it was composed from was dropped",
    "composite_rejected": "the composite failed re-validation",
    "refusal": "the model refused",
    "not_one_instruction": "the inverter did not answer with one instruction",
}

# Row fields that are scores or answers deciding a row's fate (shown on its card).
SCORE_FIELDS = (
    "answer",
    "adherence",
    "aesthetics",
    "score",
    "changed_share",
    "largest_component_share",
    "no_unwanted_changes",
    "pleasing",
    "attempts",
    "passes",
    "kept_score",
)


def reason_words(reason: str | None) -> str:
    if not reason:
        return "no reason recorded"
    return REASONS.get(reason, reason)


def row_id(row: dict[str, Any]) -> Any:
    """The identity of a row across the tables that carry it."""
    if "kind" in row:  # a triplet-table row; select's rows without a triplet have no id yet
        return row.get("triplet_id") or (row["kind"], row.get("source_id"), row.get("edit_id"))
    for key in ("candidate_id", "job_id", "source_id", "prompt_id"):
        if row.get(key):
            return row[key]
    return None


def sample_id(row: dict[str, Any]) -> str:
    if "kind" in row and not row.get("triplet_id"):  # a pair select found no candidate for
        return f"{row.get('source_id')}/{row.get('edit_id')}"
    for key in ("triplet_id", "candidate_id", "job_id", "source_id", "prompt_id"):
        if row.get(key):
            return str(row[key])
    return ""


def check_of(stage: str, row: dict[str, Any]) -> str:
    """The check inside a stage that rejected the row, when a stage runs several (the
    low-level check runs inside the pre-filter stage)."""
    base = stage.split("@", 1)[0]  # an adaptive round `prefilter@2` is a prefilter
    if base == "prefilter":
        return "low-level check" if row.get("reason") in LOW_LEVEL_REASONS else "VLM pre-filter"
    if base == "select":
        return "best-of losers" if row.get("reason") == "not_best" else "pairs with no pass"
    return ""


def deciding_scores(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in SCORE_FIELDS if row.get(key) is not None}


@dataclass
class Rejections:
    by_stage: dict[str, list[dict[str, Any]]]  # stage -> its rejected rows, in stage order
    # what a card needs to show a row of a table that has no images or text of its own
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompts: dict[str, dict[str, Any]] = field(default_factory=dict)


def collect_rejections(
    stage_names: list[str], rows_of: Callable[[str], list[dict[str, Any]]]
) -> Rejections:
    """Each stage's rejected rows (dropped or failed) with their `status` and `reason`, plus
    select's best-of losers (reason "not_best")."""
    seen: set[Any] = set()  # rows already rejected by an earlier stage
    found = Rejections({})
    validations: list[dict[str, Any]] = []
    for stage in stage_names:
        rows = rows_of(stage)
        for row in rows:
            if "kind" in row:
                continue
            if row.get("candidate_id") and "edited_image" in row:
                found.candidates[row["candidate_id"]] = row  # the editor's, of any edit round
            elif row.get("source_id") and "image" in row:
                found.sources[row["source_id"]] = row
            elif row.get("prompt_id") and "prompt" in row:
                found.prompts[row["prompt_id"]] = row
        if stage == "validate":
            validations = rows
        rejected = []
        for row in rows:
            if row.get("status") in (None, OK):
                continue
            key = (row.get("status"), row_id(row))
            if key in seen:
                continue
            seen.add(key)
            rejected.append(row)
        if stage == "select" and validations:
            rejected += best_of_losers(validations, rows, found.candidates)
        if rejected:
            found.by_stage[stage] = rejected
    return found


def best_of_losers(
    validations: list[dict[str, Any]],
    selected: list[dict[str, Any]],
    candidates: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Validated candidates that select did not keep, each with the kept one's score."""
    kept = {row["candidate_id"] for row in selected if row["status"] == OK}
    winners = {(r["source_id"], r["edit_id"]): r for r in selected if r["status"] == OK}
    losers = []
    for row in validations:
        if row["status"] != OK or row["candidate_id"] in kept:
            continue
        candidate = candidates.get(row["candidate_id"], {})
        winner = winners.get((candidate.get("source_id"), candidate.get("edit_id")))
        loser = {**row, "status": "dropped", "reason": "not_best"}
        if winner is not None:
            loser["kept_score"] = winner["score"]
            loser["kept_candidate"] = winner["candidate_id"]
        losers.append(loser)
    return losers


def sample_rejections(rows: list[dict[str, Any]], count: int, salt: str) -> list[dict[str, Any]]:
    """Up to `count` rows spread over the reasons (each reason in turn, a seeded order within
    one), so a rare reason is shown next to a common one."""
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_reason[f"{row['status']}:{row.get('reason')}"].append(row)
    queues = [
        sorted(group, key=lambda r: unit_interval(salt, sample_id(r) or str(row_id(r))))
        for _, group in sorted(by_reason.items())
    ]
    picked: list[dict[str, Any]] = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked
