"""What every executor shares around the stages: preparing a run directory (config diff,
redo, repair), the resume checks of markers, export, stats, and choosing the executor.

    prepare_run_dir -> executor.run() (stages, via nhr/executors) -> finish_run (export, stats)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhr.config import NhrConfig
from nhr.pipeline import (
    ALL_STAGE_NAMES,
    EXPORT,
    build_stages,
    config_changes,
    fold_rounds,
    release_stage,
)
from nhr.pipeline import stage_names as _stage_names
from nhr.stats import StageStats
from nhr.store import RunStore

if TYPE_CHECKING:
    from nhr.executors.base import Executor

EXECUTORS = ("local", "ray")


class RunConfigError(ValueError):
    """The run directory holds work made with a different config."""


@dataclass
class MineResult:
    run_dir: Path | str  # a Path on local disk, the URL on object storage
    stats: dict[str, Any]
    executor: str = "local"
    # how the executor ran: driver seconds per stage; for ray, where each role's actors ran
    details: dict[str, Any] = field(default_factory=dict)


# -- the run directory before the stages --------------------------------------------------------


def check_redo_from(config: NhrConfig, redo_from: str | None) -> None:
    """An unknown --redo-from stage is refused before the run directory is touched."""
    names = _stage_names(config)
    if redo_from is not None and redo_from not in names:
        raise RunConfigError(f"unknown stage {redo_from!r}; stages: {', '.join(names)}")


def _setup_errors() -> tuple[type[BaseException], ...]:
    from nhr.backends.base import BackendSetupError, MissingExtraError
    from nhr.preflight import PreflightError
    from nhr.sources import SourceError

    return (BackendSetupError, MissingExtraError, PreflightError, SourceError)


# What stops a run before it can start (a missing key, extra or model, photo sources that
# cannot be read): nothing was mined.
SETUP_ERRORS = _setup_errors()


def discard_unused_run(store: RunStore) -> None:
    """Delete a run directory this `nhr mine` created, if no stage wrote anything in it: a
    run that could not start leaves nothing behind (local disk and object storage)."""
    worked = any(store.has_any_output(stage) for stage in ALL_STAGE_NAMES)
    if not worked and not store.storage.names("stages/design/parts"):
        store.storage.delete_folder("")


def prepare_run_dir(store: RunStore, config: NhrConfig, redo_from: str | None) -> None:
    """Refuse to mix work made under another config; clear stages the user asked to redo;
    let a finished or stopped run grow (`run.prompts` raised: see `growth`)."""
    check_redo_from(config, redo_from)
    names = _stage_names(config)
    previous = store.read_config()
    new = config.to_dict()
    redo_index = names.index(redo_from) if redo_from else len(names)
    grows = False
    if previous is not None:
        changes = config_changes(previous, new)
        grows = redo_index > 0 and growth(previous, config, changes) is not None
        blocking = [
            change
            for change in changes
            if change[0] in names
            and names.index(change[0]) < redo_index
            and not (grows and change[1] == "run.prompts")
            and any(store.has_any_output(s) for s in names[names.index(change[0]) :])
        ]
        if blocking:
            first = blocking[0][0]
            lines = [f"  {key}: {old!r} -> {new_value!r}" for _, key, old, new_value in blocking]
            raise RunConfigError(
                f"the config differs from the one {store.root} was mined with, in settings "
                f"that change stage '{first}' and every stage after it:\n"
                + "\n".join(lines)
                + f"\nTo recompute from there, add --redo-from {first}; "
                "or mine into a new --run-dir."
            )
    # Temp files and export staging folders left by a killed process are never read, only
    # cleaned up: every real file was put in place whole.
    store.storage.clean_partial()
    if redo_from is not None:
        stale = set(names[redo_index:]) | (set(ALL_STAGE_NAMES) - set(names))
        for stage in stale:
            store.clear_stage(stage)
        store.storage.delete_folder("dataset")
    if grows:
        # design runs again: its batches come back from their checkpoints and the new ones
        # are asked for; finished shards whose inputs are unchanged are kept (their markers
        # record the digests of what they read), the schedule and the export are redone;
        # until then the run is not finished (nhr status, nhr report)
        store.remove_marker("design", None)
        store.remove_marker(EXPORT, None)
    if previous is not None:
        from nhr.verify import repair

        repair(store, config)  # damaged tables and images: their shards are redone
    store.write_config(new)


def growth(
    previous: dict[str, Any], config: NhrConfig, changes: list[tuple[str, str, Any, Any]]
) -> tuple[int, int] | None:
    """(old, new) prompt counts when `run.prompts` was raised, so the run grows into it.

    Growing keeps every designed prompt: the first N prompts of a run of M > N prompts are the
    N prompts of the smaller run (design asks the same batches whatever the prompt count and
    numbers a block's prompts round-robin). A lower `run.prompts` never shrinks a run."""
    change = next((c for c in changes if c[1] == "run.prompts"), None)
    if change is None:
        return None
    old, new = int(change[2]), int(change[3])
    return (old, new) if new > old else None


# -- markers: what is done and still up to date --------------------------------------------------


def shard_count(store: RunStore) -> int:
    marker = store.read_marker("design")
    return int(marker["shards"]) if marker else 0


def inputs_read(store: RunStore, names: tuple[str, ...]) -> dict[str, list[str | None]]:
    """The digest of every shard table of `names`: what a global step reads."""
    shards = range(shard_count(store))
    return {name: [store.table_digest(name, shard) for shard in shards] for name in names}


def shard_up_to_date(store: RunStore, stage: str, reads: tuple[str, ...], shard: int) -> bool:
    """Done, and the tables it read are still the ones there now (an upstream shard redone
    after damage may, with a non-deterministic model, have come back different)."""
    marker = store.read_marker(stage, shard)
    if marker is None:
        return False
    read = marker.get("inputs")  # absent in markers of older nhr versions
    return read is None or read == {name: store.table_digest(name, shard) for name in reads}


def global_up_to_date(store: RunStore, name: str, reads: tuple[str, ...]) -> bool:
    marker = store.read_marker(name)
    if marker is None:
        return False
    read = marker.get("inputs")
    return read is None or read == inputs_read(store, reads)


# -- after the stages -------------------------------------------------------------------------


def export(store: RunStore, config: NhrConfig, force: bool = False) -> None:
    """Write the dataset from the released triplets, unless it is up to date (`force`: again)."""
    from nhr.stages.export import write_dataset

    release = release_stage(config)
    reads = ("design", "generate", "edit", "validate", release)
    if not force and global_up_to_date(store, EXPORT, reads):
        return
    read = inputs_read(store, reads)
    started = time.perf_counter()
    shards = list(range(shard_count(store)))
    summary = write_dataset(store, shards, release, config.export.rows_per_file)
    # every released triplet goes into the dataset: rows in (the release stage's ok rows)
    # equal rows out
    stats = StageStats(rows_in=summary["rows"], rows_out=summary["rows"])
    store.mark_done(
        EXPORT,
        None,
        {
            "summary": summary,
            "inputs": read,
            "seconds": round(time.perf_counter() - started, 3),
            "stats": stats.to_dict(),
        },
    )


def finish_run(store: RunStore, config: NhrConfig, reexport: bool = False) -> dict[str, Any]:
    """Export, then write and return report/stats.json; a report `nhr report` wrote before
    (of a stopped run, or of the run before it grew) is rebuilt, so it never describes a run
    that no longer exists."""
    export(store, config, force=reexport)
    stats = collect_stats(store, config)
    store.write_json("report/stats.json", stats)
    if store.storage.exists(REPORT_PAGE):
        refresh_report(store)
    return stats


REPORT_PAGE = "report/index.html"


def refresh_report(store: RunStore) -> None:
    """Rebuild the report for the target it was made for. The run itself is finished and
    kept whatever happens here: a report that cannot be rebuilt is a warning."""
    import json
    import logging

    from nhr.analysis.report import DEFAULT_TARGET, build_report

    try:
        estimate = json.loads(store.storage.read_bytes("report/estimate.json"))
        target = int(estimate["target_released"])
    except (OSError, ValueError, KeyError, TypeError):
        target = DEFAULT_TARGET  # no estimate was written (nothing released then)
    try:
        build_report(store.root, target=target)
    except Exception as error:  # noqa: BLE001 - the mined data must not depend on the page
        logging.getLogger(__name__).warning(
            "the report in %s could not be rebuilt (%s: %s); run `nhr report` on the run",
            store.where("report"),
            type(error).__name__,
            error,
        )


def collect_stats(store: RunStore, config: NhrConfig) -> dict[str, Any]:
    """Per-stage counters summed over finished shards, in stage order (stats.json).

    `model_loads` counts the models built per role (on the ray executor: per actor), over
    every session that mined this run."""
    shard_stages = {stage.name for stage in build_stages(config) if not stage.global_scope}
    design = store.read_marker("design")
    shard_total = int(design["shards"]) if design else None
    stages = []
    loads_total: dict[str, int] = {}
    for name in _stage_names(config):
        total = StageStats()
        seconds = 0.0
        loads: dict[str, int] = {}
        marker = store.read_marker(name)
        if marker is not None:
            markers = [marker]
            done = shard_total
        else:
            markers = [store.read_marker(name, shard) or {} for shard in store.done_shards(name)]
            done = len(markers)
        for found in markers:
            total.merge(StageStats.from_dict(found.get("stats", {})))
            seconds += found.get("seconds", 0.0)
            for role, count in (found.get("model_loads") or {}).items():
                loads[role] = loads.get(role, 0) + int(count)
                loads_total[role] = loads_total.get(role, 0) + int(count)
        entry = {"stage": name, "scope": "shard" if name in shard_stages else "global"}
        entry.update(shards_done=done, shards_total=shard_total, wall_seconds=round(seconds, 3))
        entry.update(total.to_dict())
        entry["model_loads"] = dict(sorted(loads.items()))
        stages.append(entry)
    export_marker = store.read_marker(EXPORT)
    return {
        "run_dir": str(store.root),
        "complete": export_marker is not None,
        "stages": fold_rounds(stages),  # an adaptive run's rounds summed per stage
        "model_loads": dict(sorted(loads_total.items())),
        "dataset": export_marker["summary"] if export_marker else None,
    }


# -- choosing the executor -------------------------------------------------------------------


def create_executor(
    name: str,
    config: NhrConfig,
    store: RunStore,
    show_progress: bool = True,
    ray_address: str | None = None,
) -> Executor:
    """`local` (this process) or `ray` (needs the `ray` extra; `ray_address` or RAY_ADDRESS
    picks the cluster, none starts a local Ray instance)."""
    if name == "local":
        from nhr.executors.local import LocalExecutor

        return LocalExecutor(config, store, show_progress=show_progress)
    if name == "ray":
        from nhr.executors.ray import RayExecutor

        address = ray_address or os.environ.get("RAY_ADDRESS") or None
        return RayExecutor(config, store, show_progress=show_progress, address=address)
    raise ValueError(f"unknown executor {name!r}; executors: {', '.join(EXECUTORS)}")
