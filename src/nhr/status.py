"""`nhr status RUN`: a table of where each stage stands, readable while a run is mining."""

from __future__ import annotations

from pathlib import Path

from nhr.lock import lock_holder


def run_state(run_dir: Path | str, complete: bool) -> tuple[str, str]:
    """(state, words) of a run: finished, mining (a live miner holds the run's lock) or
    stopped (neither: killed or interrupted, resumable with `nhr mine`)."""
    if complete:
        return "finished", "finished"
    holder = lock_holder(run_dir)
    if holder is not None:
        words = f"mining (pid {holder['pid']})"
        if holder.get("host"):
            words += f" on {holder['host']}"
        return "mining", words
    return "stopped", "stopped before the end; run `nhr mine` again to resume"


def render_status(run_dir: Path | str) -> str:
    from nhr.config import parse_config
    from nhr.run import collect_stats
    from nhr.store import RunStore

    store = RunStore(run_dir)
    stats = collect_stats(store, parse_config(store.read_config()))
    holder = lock_holder(run_dir)
    if stats["complete"]:
        state = "finished"
    elif holder is not None:
        state = f"mining (pid {holder['pid']})"
        if holder.get("host"):
            state += f" on {holder['host']}"
    else:
        state = "stopped before the end; run `nhr mine` again to resume"
    lines = [f"run {run_dir}: {state}", ""]
    header = f"{'stage':<13}{'shards':>9}{'in':>9}{'out':>9}{'out/in':>8}  dropped / failed"
    lines += [header, "-" * len(header)]
    for stage in stats["stages"]:
        total = stage["shards_total"]
        shards = f"{stage['shards_done']}/{total if total is not None else '?'}"
        if stage["scope"] == "global":
            shards = "done" if stage["shards_done"] else "-"
        kept = f"{stage['rows_out'] / stage['rows_in']:.0%}" if stage["rows_in"] else ""
        reasons = ", ".join(
            [f"{k} {v}" for k, v in stage["dropped"].items()]
            + [f"failed:{k} {v}" for k, v in stage["failed"].items()]
        )
        lines.append(
            f"{stage['stage']:<13}{shards:>9}{stage['rows_in']:>9}{stage['rows_out']:>9}"
            f"{kept:>8}  {reasons}"
        )
    where = store.where("dataset")
    if stats["dataset"]:
        lines += ["", f"dataset: {stats['dataset']['rows']} triplets in {where}"]
    elif store.storage.exists("dataset/README.md"):  # a run that grows keeps its last export
        lines += ["", f"dataset: an earlier export is in {where}, replaced when the run finishes"]
    return "\n".join(lines)
