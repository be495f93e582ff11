"""What every executor shares: the backend pool of a worker, the stage adapter that runs one
unit of work anywhere, and the stage loop with its resume checks.

A unit is one (stage, shard), or one global stage. `StageAdapter` runs a unit wherever it is
called (this process, a Ray actor): it reads the unit's inputs, builds the `StageContext` with
the worker's `BackendPool` (models load once per worker), times the call, takes the backends'
usage deltas, runs the stage, writes the shard table(s) and returns the completion marker.
The marker is the commit and only the driver writes it (`Executor`), once it knows the unit is
worth keeping (see `DeferredMarkers`). Stage code knows none of this.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from nhr import records
from nhr.backends import create_backend
from nhr.cache import CachedBackend
from nhr.calls import FailureWatch
from nhr.config import NhrConfig
from nhr.pipeline import base_name, build_stages
from nhr.run import (
    MineResult,
    finish_run,
    global_up_to_date,
    inputs_read,
    shard_count,
    shard_up_to_date,
)
from nhr.stages.base import ShardInputs, Stage, StageContext
from nhr.store import RunStore

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

# Backends whose calls cost money: their answers are cached by default (run.request_cache).
CACHED_BY_DEFAULT = ("openai", "gemini")


class BackendPool:
    """One backend instance per distinct model config, built on first use and kept for the
    stages that still need it (models load once per worker). `loads` counts the models built,
    by the role that asked first (a model two roles share with the same config loads once)."""

    def __init__(self, config: NhrConfig, store: RunStore | None = None) -> None:
        self.models = config.models
        self.cache_mode = config.run.request_cache
        self.store = store
        self._instances: dict[str, Any] = {}
        self.loads: Counter[str] = Counter()

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
                backend = CachedBackend(backend, self.store.storage, self.store.images)
            self._instances[key] = backend
            self.loads[role] += 1
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


def usage_delta(before: dict, after: dict) -> dict[str, float]:
    delta: dict[str, float] = {}
    for key, counters in after.items():
        for name, value in counters.items():
            delta[name] = delta.get(name, 0.0) + value - before.get(key, {}).get(name, 0.0)
    return delta


class StageAdapter:
    """Runs one unit of a stage in the calling process and returns its completion marker
    (not written: committing is the driver's job). Reads and writes go to the run directory,
    so a unit runs the same in the driver or in a worker that sees that directory."""

    def __init__(self, config: NhrConfig, store: RunStore, backends: BackendPool) -> None:
        self.config = config
        self.store = store
        self.backends = backends
        self.stages = {stage.name: stage for stage in build_stages(config)}

    def _context(
        self, stage: Stage, watch: FailureWatch | None, progress: Callable[[int], None] | None
    ) -> StageContext:
        return StageContext(
            config=self.config,
            images=self.store.images,
            backends=self.backends.get,
            watch=watch,
            progress=progress or (lambda n: None),
            load_checkpoint=lambda key: self.store.load_checkpoint(stage.name, key),
            save_checkpoint=lambda key, value: self.store.save_checkpoint(stage.name, key, value),
        )

    def _call(
        self,
        stage: Stage,
        ctx: StageContext,
        inputs: Any,
        consume: Callable[[Any], Any] = lambda result: result,
    ) -> tuple[Any, float, dict[str, int]]:
        """Run the stage (`consume`: what to do with what it returns, inside the measured
        call: a global stage yields its shards lazily); its usage delta goes into ctx.stats.
        Returns (result, seconds, models loaded meanwhile by role)."""
        started = time.perf_counter()
        loads_before = Counter(self.backends.loads)
        usage_before = self.backends.usage(stage.roles)
        result = consume(stage.run(ctx, inputs))
        ctx.stats.add_usage(usage_delta(usage_before, self.backends.usage(stage.roles)))
        loads = dict(sorted((Counter(self.backends.loads) - loads_before).items()))
        return result, time.perf_counter() - started, loads

    def run_shard(
        self,
        stage_name: str,
        shard: int,
        watch: FailureWatch | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        stage = self.stages[stage_name]
        inputs = {name: self.store.read_rows(name, shard) for name in stage.reads}
        read = {name: self.store.table_digest(name, shard) for name in stage.reads}
        ctx = self._context(stage, watch, progress)
        started = time.perf_counter()
        rows, _, loads = self._call(stage, ctx, inputs)
        digest = self.store.write_rows(stage.name, shard, rows, SCHEMAS[base_name(stage.name)])
        marker = {
            "rows": len(rows),
            "table_sha256": digest,
            "inputs": read,
            "seconds": round(time.perf_counter() - started, 3),
            "stats": ctx.stats.to_dict(),
        }
        if loads:
            marker["model_loads"] = loads
        return marker

    def run_global(
        self,
        stage_name: str,
        watch: FailureWatch | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """A stage over all shards at once: writes one table per shard, returns the marker.

        The stage reads its inputs one shard at a time (`ShardInputs`) and yields each
        shard's rows as soon as they are complete; each table is written as it comes and
        dropped, so this process never holds every row of the run."""
        stage = self.stages[stage_name]
        # a stage that reads nothing (design) defines the shards by what it yields
        shard_total = shard_count(self.store) if stage.reads else 0
        read = inputs_read(self.store, stage.reads)
        shards = ShardInputs(
            shard_total,
            lambda shard: {name: self.store.read_rows(name, shard) for name in stage.reads},
        )
        ctx = self._context(stage, watch, progress)
        started = time.perf_counter()
        tables: list[str] = []
        table_rows: list[int] = []

        def write(shard: int, rows: list[dict[str, Any]]) -> None:
            if shard < len(tables):
                raise ValueError(f"{stage.name} yielded shard {shard} twice or out of order")
            while len(tables) <= shard:  # a shard with no rows still gets its (empty) table
                written = rows if len(tables) == shard else []
                schema = SCHEMAS[base_name(stage.name)]
                tables.append(self.store.write_rows(stage.name, len(tables), written, schema))
                table_rows.append(len(written))

        def write_all(shard_rows: Iterable[tuple[int, list[dict[str, Any]]]]) -> None:
            for shard, rows in shard_rows:
                write(shard, rows)
            if len(tables) < shard_total:
                write(shard_total - 1, [])

        _, _, loads = self._call(stage, ctx, shards, consume=write_all)
        marker = {
            "shards": len(tables),
            "tables": tables,
            "table_rows": table_rows,
            "inputs": read,
            "seconds": round(time.perf_counter() - started, 3),
            "stats": ctx.stats.to_dict(),
        }
        if loads:
            marker["model_loads"] = loads
        return marker


def progress_every() -> float:
    """Seconds between progress lines when stderr is not a terminal (a log file, a batch
    job): NHR_PROGRESS_EVERY, default 30. `nhr.mine` reads it before the run directory is
    touched, so a bad value is one clear error, not a traceback mid-run."""
    from nhr.config import ConfigError

    raw = os.environ.get("NHR_PROGRESS_EVERY", "30")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"NHR_PROGRESS_EVERY must be a positive number of seconds, not {raw!r}")
    return seconds


class Progress:
    """The progress of one stage: units done out of the stage's total (on resume the units
    done before count as done), with the number of items (model requests) finished so far,
    so a long shard still shows movement. A stage that counts its own progress (design:
    prompts) advances the bar with `items` instead (`counts_items`).

    On a terminal it is a tqdm bar; elsewhere (a log file, a batch job's output) one line
    every `every` seconds, with the rate and the ETA, and one when the stage ends, instead of
    a carriage-return update per item."""

    def __init__(
        self,
        stage: str,
        total: int,
        done: int = 0,
        unit: str = "shard",
        counts_items: bool = False,
        stream: Any = None,
        every: float | None = None,
    ) -> None:
        import sys

        self.stage, self.total, self.unit = stage, max(total, done), unit
        self.start_done = self.done = done
        self.counts_items = counts_items
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.every = progress_every() if every is None else every
        self.started = self.last_line = time.monotonic()
        self.bar = None
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=done,
                desc=f"{stage:>12}",
                unit=unit,
                dynamic_ncols=True,
                file=self.stream,
            )

    def items(self, count: int) -> None:
        self.count += count
        if self.counts_items:
            self._advance(min(count, self.total - self.done))
        elif self.bar is not None:
            self.bar.set_postfix_str(f"{self.count} items", refresh=True)
        else:
            self._maybe_line()

    def shard_done(self) -> None:
        if not self.counts_items:
            self._advance(1)

    def _advance(self, units: int) -> None:
        self.done += units
        if self.bar is not None:
            self.bar.update(units)
        else:
            self._maybe_line()

    def _maybe_line(self) -> None:
        if time.monotonic() - self.last_line >= self.every:
            self._line()

    def _line(self, final: bool = False) -> None:
        self.last_line = now = time.monotonic()
        elapsed = now - self.started
        share = self.done / self.total if self.total else 1.0
        parts = [f"{self.stage}: {self.done:,}/{self.total:,} {self.unit}s ({share:.0%})"]
        if not self.counts_items:
            # items are this process's: a resumed stage does not re-read what it finished
            since = " since resuming" if self.start_done else ""
            parts.append(f"{self.count:,} items{since}")
        made = self.done - self.start_done
        if final:
            parts.append(f"done in {_duration(elapsed)}")
        elif made > 0:
            rate = made / elapsed
            parts.append(f"{rate:.3g} {self.unit}s/s")
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        elif self.count and not self.counts_items:
            parts.append(f"{self.count / elapsed:.3g} items/s")
        print(", ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(final=True)


def _is_terminal(stream: Any) -> bool:
    """A terminal a bar can be drawn on: one that reports no width (a pty whose size was
    never set) gets the log lines, since tqdm would print empty lines there."""
    try:
        if not stream.isatty():
            return False
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # no isatty or fileno, a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class DeferredMarkers:
    """Completion markers of one stage run (of one worker, on executors with several). While
    the FailureWatch that judged their items is undecided (every item sent to some model so
    far failed, too few yet to judge), markers wait: if the backend turns out broken, those
    shards are redone by the next run instead of being kept with rows that all failed."""

    def __init__(self, store: RunStore, watch: FailureWatch | None = None) -> None:
        self.store = store
        self.watch = watch
        self._pending: list[tuple[str, int, dict[str, Any]]] = []

    def mark_done(
        self, stage: str, shard: int, marker: dict[str, Any], undecided: bool | None = None
    ) -> None:
        """`undecided`: the watch's state as the worker reported it (default: ask `watch`)."""
        self._pending.append((stage, shard, marker))
        if not (self.watch.undecided() if undecided is None else undecided):
            self.flush()

    def flush(self) -> None:
        for stage, shard, marker in self._pending:
            self.store.mark_done(stage, shard, marker)
        self._pending.clear()


class Executor(ABC):
    """The stage loop and its resume checks; subclasses say where units run.

    Stage by stage: a global stage not up to date runs as one unit; a shard stage runs its
    shards without an up-to-date marker (`run_shards`). Then export and stats (nhr.run)."""

    name = "?"
    # Whether a stage's own progress (ctx.progress) reaches the bar while a global unit runs;
    # where it does not (a unit run by a remote worker), the bar counts units.
    streams_progress = False

    def __init__(self, config: NhrConfig, store: RunStore, show_progress: bool = True) -> None:
        self.config = config
        self.store = store
        self.show_progress = show_progress
        self.stages = build_stages(config)
        self.stage_seconds: dict[str, float] = {}  # driver wall time per stage run here

    def run(self, reexport: bool = False) -> MineResult:
        """Run every stage not done yet, then export (`reexport`: export again even if done;
        the new dataset replaces the old one only once it is complete)."""
        try:
            for position, stage in enumerate(self.stages):
                started = time.perf_counter()
                if stage.global_scope:
                    if not global_up_to_date(self.store, stage.name, stage.reads):
                        self.run_global(stage)
                else:
                    count = shard_count(self.store)
                    pending = [s for s in range(count) if not self.up_to_date(stage, s)]
                    if pending:
                        self.run_shards(stage, pending)
                self.stage_seconds[stage.name] = round(time.perf_counter() - started, 3)
                self.stage_finished(position)
        finally:
            self.close()
        stats = finish_run(self.store, self.config, reexport)
        return MineResult(self.store.root, stats, executor=self.name, details=self.details())

    def up_to_date(self, stage: Stage, shard: int) -> bool:
        return shard_up_to_date(self.store, stage.name, stage.reads, shard)

    def watch(self, stage: Stage) -> FailureWatch:
        return FailureWatch(stage.name, self.config.retry.stop_after_failures)

    def progress(self, stage: Stage, units: int) -> Progress | None:
        """The progress of a stage with `units` to run now: of a shard stage, out of all its
        shards (those done before a resume count as done); a stage that counts its own
        progress (`progress_total`, design: prompts) in its own unit."""
        if not self.show_progress:
            return None
        own_total = getattr(stage, "progress_total", None)
        if own_total is not None and self.streams_progress:
            total, unit = own_total(self.config)
            return Progress(stage.name, total, unit=unit, counts_items=True)
        total = units if stage.global_scope else max(units, shard_count(self.store))
        return Progress(stage.name, total, done=total - units)

    @abstractmethod
    def run_shards(self, stage: Stage, shards: list[int]) -> None:
        """Run the pending shards of a shard stage and commit their markers."""

    @abstractmethod
    def run_global(self, stage: Stage) -> None:
        """Run a global stage as one unit and commit its marker."""

    def stage_finished(self, position: int) -> None:
        """Called after each stage (release what later stages do not need)."""
        return None

    def close(self) -> None:
        """Called once the stages are done or the run stopped."""
        return None

    def details(self) -> dict[str, Any]:
        """What this executor wants to show about how it ran (MineResult.details)."""
        return {"stage_seconds": dict(self.stage_seconds)}
