"""The default executor: every stage in this process, the run directory on local disk.

Stage by stage, shard by shard: read the inputs of a shard, run the stage, write its table,
then its completion marker. A shard with a marker is skipped (unless a table it read has
changed since: its marker records their digests), so re-running the same command resumes a
killed run, and because ids and seeds are deterministic the result is the same as an
uninterrupted run. Before that, `prepare_run_dir` has damaged shards redone (nhr/verify.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhr import records
from nhr.backends import create_backend
from nhr.cache import CachedBackend
from nhr.calls import FailureWatch
from nhr.config import NhrConfig
from nhr.pipeline import (
    ALL_STAGE_NAMES,
    EXPORT,
    build_stages,
    config_changes,
    release_stage,
    stage_names,
)
from nhr.stages.base import Stage, StageContext
from nhr.stages.export import write_dataset
from nhr.stats import StageStats
from nhr.store import RunStore, atomic_write_json

log = logging.getLogger(__name__)

SCHEMAS = {
    "design": records.PROMPT,
    "generate": records.SOURCE,
    "plausibility": records.GATE,
    "schedule": records.JOB,
    "edit": records.CANDIDATE,
    "prefilter": records.PREFILTER,
    "validate": records.VALIDATION,
    "select": records.TRIPLET,
    "invert": records.TRIPLET,
    "backward": records.TRIPLET,
    "compose": records.TRIPLET,
}


class RunConfigError(ValueError):
    """The run directory holds work made with a different config."""


@dataclass
class MineResult:
    run_dir: Path
    stats: dict[str, Any]


# Backends whose calls cost money: their answers are cached by default (run.request_cache).
CACHED_BY_DEFAULT = ("openai", "gemini")


class BackendPool:
    """One backend instance per distinct model config, built on first use and kept for the
    stages that still need it (models load once per worker)."""

    def __init__(self, config: NhrConfig, store: RunStore | None = None) -> None:
        self.models = config.models
        self.cache_mode = config.run.request_cache
        self.store = store
        self._instances: dict[str, Any] = {}

    def _key(self, role: str) -> str:
        return json.dumps(getattr(self.models, role).model_dump(mode="json"), sort_keys=True)

    def get(self, role: str) -> Any:
        key = self._key(role)
        if key not in self._instances:
            log.info("loading %s model", role)
            model = getattr(self.models, role)
            backend = create_backend(model)
            if self.store is not None and (
                self.cache_mode == "on"
                or (self.cache_mode == "auto" and model.backend in CACHED_BY_DEFAULT)
            ):
                backend = CachedBackend(backend, self.store.root / "cache", self.store.images)
            self._instances[key] = backend
        return self._instances[key]

    def usage(self, roles: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Cumulative usage counters of the already-built backends serving `roles`."""
        snapshot = {}
        for role in roles:
            key = self._key(role)
            backend = self._instances.get(key)
            if backend is not None and hasattr(backend, "usage"):
                snapshot[key] = dict(backend.usage())
        return snapshot

    def keep_only(self, roles: set[str]) -> None:
        """Release the models no remaining stage needs (frees GPU memory between stages)."""
        wanted = {self._key(role) for role in roles}
        released = [key for key in self._instances if key not in wanted]
        for key in released:
            del self._instances[key]
        if released:
            _free_accelerator_memory()


def _free_accelerator_memory() -> None:
    """Collect released models and hand their CUDA memory back, if torch is in use at all."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def prepare_run_dir(store: RunStore, config: NhrConfig, redo_from: str | None) -> None:
    """Refuse to mix work made under another config; clear stages the user asked to redo."""
    names = stage_names(config)
    if redo_from is not None and redo_from not in names:
        raise RunConfigError(f"unknown stage {redo_from!r}; stages: {', '.join(names)}")
    previous = store.read_config()
    new = config.to_dict()
    redo_index = names.index(redo_from) if redo_from else len(names)
    if previous is not None:
        blocking = [
            change
            for change in config_changes(previous, new)
            if change[0] in names
            and names.index(change[0]) < redo_index
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
    remove_partial_files(store.root)
    if redo_from is not None:
        stale = set(names[redo_index:]) | (set(ALL_STAGE_NAMES) - set(names))
        for stage in stale:
            store.clear_stage(stage)
        shutil.rmtree(store.root / "dataset", ignore_errors=True)
    if previous is not None:
        from nhr.verify import repair

        repair(store, config)  # damaged tables and images: their shards are redone
    store.write_config(new)


def remove_partial_files(root: Path) -> None:
    """Temp files and export staging folders left by a killed process are never read, only
    cleaned up: every real file was renamed into place whole."""
    if not root.exists():
        return
    for path in root.rglob(".*.tmp"):
        path.unlink(missing_ok=True)
    for path in root.glob(".dataset-*"):
        shutil.rmtree(path, ignore_errors=True)


def _usage_delta(before: dict, after: dict) -> dict[str, float]:
    delta: dict[str, float] = {}
    for key, counters in after.items():
        for name, value in counters.items():
            delta[name] = delta.get(name, 0.0) + value - before.get(key, {}).get(name, 0.0)
    return delta


class _Progress:
    """One progress bar per stage: shards done out of shards to do, with the number of items
    (model requests) finished so far, so a long shard still shows movement."""

    def __init__(self, stage: str, shards: int) -> None:
        from tqdm import tqdm

        self.count = 0
        self.bar = tqdm(total=shards, desc=f"{stage:>12}", unit="shard", dynamic_ncols=True)

    def items(self, count: int) -> None:
        self.count += count
        self.bar.set_postfix_str(f"{self.count} items", refresh=True)

    def shard_done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _DeferredMarkers:
    """Completion markers of one stage run. While its FailureWatch is undecided (every item
    sent to some model so far failed, too few yet to judge), markers wait: if the backend
    turns out broken, those shards are redone by the next run instead of being kept with rows
    that all failed."""

    def __init__(self, store: RunStore, watch: FailureWatch) -> None:
        self.store = store
        self.watch = watch
        self._pending: list[tuple[str, int, dict[str, Any]]] = []

    def mark_done(self, stage: str, shard: int, marker: dict[str, Any]) -> None:
        self._pending.append((stage, shard, marker))
        if not self.watch.undecided():
            self.flush()

    def flush(self) -> None:
        for stage, shard, marker in self._pending:
            self.store.mark_done(stage, shard, marker)
        self._pending.clear()


class LocalExecutor:
    def __init__(self, config: NhrConfig, store: RunStore, show_progress: bool = True) -> None:
        self.config = config
        self.store = store
        self.show_progress = show_progress
        self.backends = BackendPool(config, store)
        self.stages = build_stages(config)

    def run(self, reexport: bool = False) -> MineResult:
        """Run every stage not done yet, then export (`reexport`: export again even if done;
        the new dataset replaces the old one only once it is complete)."""
        for position, stage in enumerate(self.stages):
            self._run_stage(stage)
            later_roles = {role for s in self.stages[position + 1 :] for role in s.roles}
            self.backends.keep_only(later_roles)
        self._export(force=reexport)
        stats = collect_stats(self.store, self.config)
        atomic_write_json(self.store.root / "report" / "stats.json", stats)
        return MineResult(self.store.root, stats)

    def shard_count(self) -> int:
        marker = self.store.read_marker("design")
        return int(marker["shards"]) if marker else 0

    def _context(
        self, stage: Stage, progress: _Progress | None, watch: FailureWatch | None = None
    ) -> StageContext:
        return StageContext(
            config=self.config,
            images=self.store.images,
            backends=self.backends.get,
            watch=watch,
            progress=progress.items if progress is not None else (lambda n: None),
            load_checkpoint=lambda key: self.store.load_checkpoint(stage.name, key),
            save_checkpoint=lambda key, value: self.store.save_checkpoint(stage.name, key, value),
        )

    def _progress(self, stage: Stage, shards: int) -> _Progress | None:
        return _Progress(stage.name, shards) if self.show_progress else None

    def _run_stage(self, stage: Stage) -> None:
        if stage.global_scope:
            self._run_global(stage)
            return
        shards = [s for s in range(self.shard_count()) if not self._up_to_date(stage, s)]
        if not shards:
            return
        bar = self._progress(stage, len(shards))
        watch = self._watch(stage)  # one for all shards: judges the stage's first items
        markers = _DeferredMarkers(self.store, watch)
        try:
            for shard in shards:
                inputs = {name: self.store.read_rows(name, shard) for name in stage.reads}
                read = {name: self.store.table_digest(name, shard) for name in stage.reads}
                ctx = self._context(stage, bar, watch)
                started = time.perf_counter()
                usage_before = self.backends.usage(stage.roles)
                rows = stage.run(ctx, inputs)
                ctx.stats.add_usage(_usage_delta(usage_before, self.backends.usage(stage.roles)))
                digest = self.store.write_rows(stage.name, shard, rows, SCHEMAS[stage.name])
                markers.mark_done(
                    stage.name,
                    shard,
                    {
                        "rows": len(rows),
                        "table_sha256": digest,
                        "inputs": read,
                        "seconds": round(time.perf_counter() - started, 3),
                        "stats": ctx.stats.to_dict(),
                    },
                )
                if bar is not None:
                    bar.shard_done()
            markers.flush()
        finally:
            if bar is not None:
                bar.close()

    def _watch(self, stage: Stage) -> FailureWatch:
        return FailureWatch(stage.name, self.config.retry.stop_after_failures)

    def _inputs_read(self, names: tuple[str, ...]) -> dict[str, list[str | None]]:
        """The digest of every shard table of `names`: what a global step reads."""
        shards = range(self.shard_count())
        return {name: [self.store.table_digest(name, shard) for shard in shards] for name in names}

    def _up_to_date(self, stage: Stage, shard: int) -> bool:
        """Done, and the tables it read are still the ones there now (an upstream shard redone
        after damage may, with a non-deterministic model, have come back different)."""
        marker = self.store.read_marker(stage.name, shard)
        if marker is None:
            return False
        read = marker.get("inputs")  # absent in markers of older nhr versions
        return read is None or read == {
            name: self.store.table_digest(name, shard) for name in stage.reads
        }

    def _global_up_to_date(self, name: str, reads: tuple[str, ...]) -> bool:
        marker = self.store.read_marker(name)
        if marker is None:
            return False
        read = marker.get("inputs")
        return read is None or read == self._inputs_read(reads)

    def _run_global(self, stage: Stage) -> None:
        if self._global_up_to_date(stage.name, stage.reads):
            return
        shard_total = self.shard_count()
        read = self._inputs_read(stage.reads)
        inputs = {
            name: {shard: self.store.read_rows(name, shard) for shard in range(shard_total)}
            for name in stage.reads
        }
        bar = self._progress(stage, 1)
        try:
            ctx = self._context(stage, bar, self._watch(stage))
            started = time.perf_counter()
            usage_before = self.backends.usage(stage.roles)
            rows_by_shard = stage.run(ctx, inputs)
            ctx.stats.add_usage(_usage_delta(usage_before, self.backends.usage(stage.roles)))
            if bar is not None:
                bar.shard_done()
        finally:
            if bar is not None:
                bar.close()
        shards = (
            range(max(rows_by_shard, default=-1) + 1)
            if stage.name == "design"
            else range(shard_total)
        )
        tables = [
            self.store.write_rows(
                stage.name, shard, rows_by_shard.get(shard, []), SCHEMAS[stage.name]
            )
            for shard in shards
        ]
        self.store.mark_done(
            stage.name,
            None,
            {
                "shards": len(shards),
                "tables": tables,
                "table_rows": [len(rows_by_shard.get(shard, [])) for shard in shards],
                "inputs": read,
                "seconds": round(time.perf_counter() - started, 3),
                "stats": ctx.stats.to_dict(),
            },
        )

    def _export(self, force: bool = False) -> None:
        release = release_stage(self.config)
        reads = ("design", "generate", "edit", "validate", release)
        if not force and self._global_up_to_date(EXPORT, reads):
            return
        read = self._inputs_read(reads)
        started = time.perf_counter()
        triplets = sum(
            1
            for shard in range(self.shard_count())
            for row in self.store.read_rows(release, shard)
            if row["status"] == records.OK
        )
        summary = write_dataset(
            self.store, list(range(self.shard_count())), release, self.config.export.rows_per_file
        )
        stats = StageStats(rows_in=triplets, rows_out=summary["rows"])
        self.store.mark_done(
            EXPORT,
            None,
            {
                "summary": summary,
                "inputs": read,
                "seconds": round(time.perf_counter() - started, 3),
                "stats": stats.to_dict(),
            },
        )


def collect_stats(store: RunStore, config: NhrConfig) -> dict[str, Any]:
    """Per-stage counters summed over finished shards, in stage order (stats.json)."""
    shard_stages = {stage.name for stage in build_stages(config) if not stage.global_scope}
    design = store.read_marker("design")
    shard_total = int(design["shards"]) if design else None
    stages = []
    for name in stage_names(config):
        total = StageStats()
        seconds = 0.0
        marker = store.read_marker(name)
        if marker is not None:
            total.merge(StageStats.from_dict(marker["stats"]))
            seconds = marker.get("seconds", 0.0)
            done = shard_total
        else:
            done = 0
            for shard in store.done_shards(name):
                shard_marker = store.read_marker(name, shard) or {}
                total.merge(StageStats.from_dict(shard_marker.get("stats", {})))
                seconds += shard_marker.get("seconds", 0.0)
                done += 1
        entry = {"stage": name, "scope": "shard" if name in shard_stages else "global"}
        entry.update(shards_done=done, shards_total=shard_total, wall_seconds=round(seconds, 3))
        entry.update(total.to_dict())
        stages.append(entry)
    export = store.read_marker(EXPORT)
    return {
        "run_dir": str(store.root),
        "complete": export is not None,
        "stages": stages,
        "dataset": export["summary"] if export else None,
    }
