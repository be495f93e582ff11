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

# One line per reason code a stage records: what happened and to what. Shown beside the code
# in the report's drops table and on its rejected cards, so every code the pipeline emits must
# be here (tests/test_report.py reads the stages' source for them); an unknown code (a stage
# this version does not know) is shown as it is.
REASONS = {
    # design (generated sources)
    "over_target": "the designer wrote more prompts than run.prompts: the surplus is not used",
    "duplicate_prompt": "the designer repeated a prompt the run already has",
    "item_not_object": "a designed item is not a JSON object",
    "missing_prompt": "a designed item has no prompt text",
    "missing_edits": "a designed item has no list of edits",
    "no_usable_edits": "none of a designed item's edits is a usable instruction",
    "too_few_prompts": "prompts short of run.prompts: the designer hit design.max_batches first",
    # design from photos (sources.kind: images)
    "missing_image": "the photo file named by the source does not exist",
    "unreadable_file": "the photo file could not be read",
    "corrupt_image": "the photo file does not decode as an image",
    "oversized_image": "the photo has more pixels than nhr decodes (a decompression-bomb guard)",
    "truncated_image": "the photo file is cut short",
    "too_small": "the photo's shorter side is below sources.min_side",
    "no_fitting_edits": "the designer proposed no edit of the brief that fits the photo",
    "edit_not_object": "a proposed edit of a photo is not a JSON object with an instruction",
    "off_brief_operation": "a proposed edit names an operation that is not in the brief",
    "duplicate_edit": "a proposed edit repeats another edit of the same photo",
    "empty_edit": "a proposed edit has an empty instruction",
    "empty_description": "the describer gave an empty description of the photo",
    "description_too_long": "the describer's description is longer than one paragraph",
    # plausibility gate
    "implausible": "the gate found the source implausible or not what the prompt asked",
    "gate_disabled": "the plausibility gate is off: the source passed unchecked",
    # schedule
    "over_budget": "an edit job past the edit budget (schedule.budget): never sent to the editor",
    "not_in_target_mix": "the operation has no share in brief.target_mix: not scheduled",
    # edit
    "wrong_size": "the editor returned an image of another size than the source",
    # prefilter
    "no_op": "no-op: the edit changed no pixel",
    "scattered_changes": "the changes are scattered noise, not one edited region",
    "size_mismatch": "the edited image has another size than the source",
    "unreadable_image": "the source or edited image could not be decoded",
    "low_prefilter_scores": "the pre-filter's adherence or aesthetics score is below its minimum "
    "(prefilter.min_adherence, min_aesthetics)",
    "unwanted_changes": "the pre-filter saw changes the instruction did not ask for",
    "not_pleasing": "the pre-filter found the edited image not pleasing",
    # validate
    "below_threshold": "validator scores below the threshold",
    "category_excluded": "the category is excluded (validate.thresholds)",
    "second_judge_below_threshold": "the second judge scored it below the threshold",
    # select
    "not_best": "passed, but another candidate of the pair scored higher (best-of loser)",
    "no_candidate_passed": "none of the pair's candidates passed the validator",
    # invert
    "empty_inverse": "the inverter's answer holds no instruction",
    "not_one_instruction": "the inverter did not answer with one instruction",
    "banned_word": "the inverse instruction uses a banned word (undo, revert, restore, back)",
    # backward: the stage counts its drops per kind of triplet (see counted_reason)
    "forward_backward_inconsistent": "forward triplet dropped: its inverse (edited image back "
    "to the source) failed the validator under every wording, so the edit is likely not what "
    "the instruction says",
    "inverse_backward_inconsistent": "inverse triplet dropped: it failed the validator under "
    "every wording (its forward triplet is dropped with it)",
    "forward_inverse_unavailable": "forward triplet dropped: no inverse could be written or "
    "judged, so its edit was never checked backwards",
    "composite_parent_dropped": "composite dropped: a forward triplet it was made from failed "
    "the backward check",
    # ... and the reasons its rows carry, the same for every kind (see PER_KIND_REASONS)
    "backward_inconsistent": "a forward edit's inverse failed the validator under every "
    "wording: the forward triplet and its inverse are both dropped",
    "inverse_unavailable": "no inverse could be written or judged: the forward triplet was "
    "never checked backwards, and is dropped",
    "parent_dropped": "a triplet it was made from was dropped by the backward check",
    # compose
    "composite_rejected": "a composite pair dropped: every attempt (up to "
    "compose.tries_per_pair image combinations) failed re-validation",
}

# Why a model call gave no usable answer (after its retries): backends' and nhr's own codes.
FAILURES = {
    "timeout": "the model call timed out, every retry too",
    "connection": "the model's server could not be reached, every retry too",
    "rate_limited": "the server kept answering 429 (too many requests), every retry too",
    "server_error": "the server kept answering with an error (HTTP 5xx), every retry too",
    "quota": "the API account's quota is used up",
    "auth": "the server refused the API key (HTTP 401/403)",
    "not_found": "the server does not serve the model (HTTP 404)",
    "too_large": "the request is too large for the server (HTTP 413)",
    "bad_request": "the server rejected the request (HTTP 4xx)",
    "invalid_request": "the backend could not make a request of the item (e.g. no image)",
    "malformed_response": "the server's answer was broken or empty",
    "safety": "a safety filter blocked the request or the model's output",
    "refusal": "the model refused",
    "unparseable": "the model answered, but not in the asked format, every re-ask too",
    "exception": "the backend raised an error, every retry too (run with -v to see it)",
    "bad_batch": "the backend returned another number of answers than it was asked",
    "not_run": "the backend never got to the item",
    "bad_input": "the backend could not read the input image",
    "bad_image": "the backend could not read the input image",
    "unsupported": "the model cannot do this task (e.g. a text-to-image model asked to edit)",
    "nan_output": "the model's output image has NaN pixels (a numerical failure)",
    "blank_output": "the model's output image is blank (near-constant)",
    "unknown": "the backend gave no reason",
}

# Stages that make several kinds of model call record a failure as "<call>_<failure>".
FAILURE_PREFIXES = {
    "score_": "the pre-filter's score request failed",
    "unwanted_": "the pre-filter's unwanted-changes question failed",
    "aesthetic_": "the pre-filter's aesthetics question failed",
    "describe_": "describing the photo failed",
    "design_": "designing edits for the photo failed",
    "comparison_": "a pairwise comparison of two candidates failed",
    "second_judge_": "the second judge's request failed",
}

# The backward filter marks a row "backward_inconsistent" (or ...) and counts it per kind of
# triplet, "forward_backward_inconsistent": the report uses the counted name everywhere.
PER_KIND_REASONS = ("backward_inconsistent", "inverse_unavailable", "parent_dropped")

# Rejected rows that stand for something else than what the stage's statistics (the drops
# table) count, keyed by reason or stage: (what a row is, what the drops table says instead,
# with {counted}, its count). The report says so next to the two numbers.
ROWS_APART = {
    "compose": (
        "attempts",
        "the drops table counts {counted:,} pairs, each once, by the outcome of its last "
        "attempt: a pair tries up to compose.tries_per_pair image combinations until one passes",
    ),
    "no_candidate_passed": (
        "pairs",
        "not in the drops table: no drop of select, the candidates of these pairs were dropped "
        "earlier, by the pre-filter or the validator, and are counted there",
    ),
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
    words = REASONS.get(reason) or FAILURES.get(reason)
    if words:
        return words
    for prefix, call in FAILURE_PREFIXES.items():
        if reason.startswith(prefix) and reason[len(prefix) :] in FAILURES:
            return f"{call}: {FAILURES[reason[len(prefix) :]]}"
    if reason.endswith(("Error", "Exception")):  # a local backend names the exception it got
        return f"the backend raised {reason}"
    return reason


def counted_reason(row: dict[str, Any]) -> str | None:
    """The reason of a rejected row under the name its stage counts it by (stats.json)."""
    reason = row.get("reason")
    if reason in PER_KIND_REASONS and row.get("kind"):
        return f"{row['kind']}_{reason}"
    return reason


def rows_apart(stage: str, reason: str | None, counted: int | None) -> str:
    """What the rejected rows of a reason count, and what the drops table (`counted`, None
    when it has no such row) counts instead, for the report to say next to the numbers."""
    unit, instead = ROWS_APART.get(reason or "") or ROWS_APART.get(
        stage.split("@", 1)[0], ("rows", "the drops table counts {counted:,}")
    )
    return f"{unit} ({instead.format(counted=counted or 0)})"


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
            reason = counted_reason(row)
            rejected.append(row if reason == row.get("reason") else {**row, "reason": reason})
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
