"""The survival table in the layout of docs/method.md §5, from a run's stats.json content."""

from __future__ import annotations

from typing import Any

# Change of each step in the reference run (docs/method.md §5), for comparison.
REFERENCE_CHANGE = {
    "plausibility gate": -0.560,
    "pre-filter (VLM)": -0.570,
    "low-level check": -0.030,
    "validator": -0.632,
    "best-of selection": -0.310,
    "inversion": +0.949,
    "composition": +0.307,
    "backward-consistency filter": -0.131,
}
LOW_LEVEL_REASONS = ("no_op", "scattered_changes", "size_mismatch")


def _stage(stats: dict[str, Any], name: str) -> dict[str, Any] | None:
    for stage in stats["stages"]:
        if stage["stage"] == name:
            return stage
    return None


def _row(
    step: str, remaining: int, unit: str, change: float | None, stage: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "step": step,
        "change": change,
        "remaining": remaining,
        "unit": unit,
        "reference_change": REFERENCE_CHANGE.get(step),
        # a stage with no finished shard yet (a partial run): its 0 is no count, the report
        # says "not reached yet" (statistics without `shards_done` are a finished run's)
        "reached": stage is None or stage.get("shards_done", 1) != 0,
    }


def _change(after: int, before: int) -> float | None:
    return after / before - 1.0 if before else None


def survival_table(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (step, change, remaining, unit, reference change, reached) from stats.json
    content."""
    rows = []
    generate = _stage(stats, "generate")
    gate = _stage(stats, "plausibility")
    edit = _stage(stats, "edit")
    prefilter = _stage(stats, "prefilter")
    validate = _stage(stats, "validate")
    select = _stage(stats, "select")
    if generate is None:
        return rows
    rows.append(_row("generate", generate["rows_out"], "sources", None, generate))
    if gate:
        rows.append(
            _row(
                "plausibility gate",
                gate["rows_out"],
                "sources",
                _change(gate["rows_out"], gate["rows_in"]),
                gate,
            )
        )
    if edit:
        rows.append(_row("edit attempts", edit["rows_out"], "candidates", None, edit))
    if prefilter and edit:
        low_level = sum(prefilter["dropped"].get(r, 0) for r in LOW_LEVEL_REASONS)
        after_low = prefilter["rows_in"] - low_level
        rows.append(
            _row(
                "low-level check",
                after_low,
                "candidates",
                _change(after_low, prefilter["rows_in"]),
                prefilter,
            )
        )
        rows.append(
            _row(
                "pre-filter (VLM)",
                prefilter["rows_out"],
                "candidates",
                _change(prefilter["rows_out"], after_low),
                prefilter,
            )
        )
    if validate:
        rows.append(
            _row(
                "validator",
                validate["rows_out"],
                "candidates",
                _change(validate["rows_out"], validate["rows_in"]),
                validate,
            )
        )
    if select and validate:
        rows.append(
            _row(
                "best-of selection",
                select["rows_out"],
                "triplets",
                _change(select["rows_out"], validate["rows_out"]),
                select,
            )
        )
    remaining = select["rows_out"] if select else 0
    for stage in stats["stages"]:
        name = stage["stage"]
        if name == "invert":
            added = stage["rows_out"]
            rows.append(
                _row(
                    "inversion",
                    remaining + added,
                    "triplets",
                    _change(remaining + added, remaining),
                    stage,
                )
            )
            remaining += added
        elif name == "compose":
            added = stage["rows_out"]
            rows.append(
                _row(
                    "composition",
                    remaining + added,
                    "triplets",
                    _change(remaining + added, remaining),
                    stage,
                )
            )
            remaining += added
        elif name == "backward":
            removed = sum(stage["dropped"].values())
            rows.append(
                _row(
                    "backward-consistency filter",
                    remaining - removed,
                    "triplets",
                    _change(remaining - removed, remaining),
                    stage,
                )
            )
            remaining -= removed
    if stats.get("dataset"):
        rows.append(_row("released", stats["dataset"]["rows"], "triplets", None, None))
    return rows


def released_per_forward(stats: dict[str, Any]) -> float | None:
    select = _stage(stats, "select")
    if not select or not select["rows_out"] or not stats.get("dataset"):
        return None
    return stats["dataset"]["rows"] / select["rows_out"]


def remaining_words(row: dict[str, Any]) -> str:
    """The remaining cell of a survival row: "3,905 candidates", or "not reached yet"."""
    if not row.get("reached", True):
        return "not reached yet"
    return f"{row['remaining']:,} {row['unit']}"


def survival_markdown(rows: list[dict[str, Any]]) -> str:
    def pct(value: float | None) -> str:
        return "" if value is None else f"{value:+.1%}"

    lines = ["| stage | change | remaining | reference change |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['step']} | {pct(row['change'])} | {remaining_words(row)} | "
            f"{pct(row['reference_change'])} |"
        )
    return "\n".join(lines)
