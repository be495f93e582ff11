"""The Ray executor: the same stages and run directory, units run by actor pools per model role.

Stage-major: for each stage, its pending shards go to a pool of actors serving the stage's
first model role (`stage.roles[0]`). The pool's size and each actor's resources come from
that role's model config: `replicas`, `gpus`, `cpus`, `memory_gb`. An actor builds a
`BackendPool` in its own process (each model loads once per actor, never per shard), runs
units through the `StageAdapter` (it reads inputs and writes tables and images itself) and
returns the unit's marker; the driver commits it. A pool lives while later stages use its role
(the validator's serves validate, backward and compose), and the next stage's pool starts while
the current stage runs, so process start-up and imports are not on the critical path.

Stages without a model role (schedule, select) are cheap and run in the driver through the
same adapter. Global stages with a role (design) run as one unit on one actor of their pool;
the progress such a unit counts itself (design: prompts) reaches the driver's bar through the
coordinator (`_RemoteProgress`), so it moves while the unit runs.

What all replicas share lives in one `Coordinator` actor per run, owned by the driver:

- API limits. An API-backed model (openai, gemini) keeps `limits.max_concurrency`,
  `requests_per_minute`, `tokens_per_minute` and the Retry-After pause as one limit across all
  its replicas, and across roles sharing its model config, as one process would: a server's
  limit is global. Each actor installs a `_RemoteLimiter` (`backends.api.share_limits`) before
  it builds backends; a request takes a leased slot from the coordinator (one round trip,
  ~1 ms against API calls of 100s of ms; releases go without waiting, those of one loop turn
  in one message). A slot whose replica died comes back once it outlived its request's
  `timeout_s` plus `SLOT_LEASE_MARGIN_S`.
- Failure watches. The `FailureTally` of each stage is the coordinator's: the first
  `retry.stop_after_failures` items a stage sends to a role, from all replicas together, all
  failing for one reason stop the run, as locally. Actors report each batch's outcomes (not
  once the role is disarmed) and say with each unit whether the watch is still undecided.

Failures: a unit's exception comes back unwrapped (a `BrokenBackendError` stops the run with
the message and exit code of the local executor; the other replicas stop at their next report,
and the driver cancels their units). Markers wait while the stage's watch is undecided. A
killed actor is restarted by Ray and its unit retried (`max_restarts`, `max_task_retries`); if
Ray gives up, the driver starts a new actor and resubmits the unit, so a lost worker costs at
most its unit. A retried unit rewrites the same deterministic table, so the dataset is
identical (its items are reported to the watch again). A killed driver takes its actors and
the coordinator with it (Ray ends its job); the next run starts afresh and resumes from the
markers.

The run directory is one every worker reaches: object storage (`s3://`, `gs://`, nhr/storage.py)
or a file system every node mounts. Global stages without a role (schedule) stream one shard
at a time through the driver, so its memory does not grow with the run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections import Counter, deque
from typing import Any

from nhr.backends.base import MissingExtraError

try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError
except ImportError as error:  # pragma: no cover - depends on the environment
    raise MissingExtraError(
        f"--executor ray needs ray ({error.name or 'ray'} is not installed): pip install 'nhr[ray]'"
    ) from None

from nhr.backends.api import LocalLimiter, limits_scope, share_limits
from nhr.calls import FailureTally, FailureWatch
from nhr.config import NhrConfig
from nhr.executors.base import BackendPool, DeferredMarkers, Executor, StageAdapter
from nhr.stages.base import Stage
from nhr.store import RunStore, table_from_bytes

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # per actor: Ray restarts a dead actor and retries its unit this many times
MAX_RESUBMITS = 3  # per unit, by the driver, once Ray gave up on an actor
NAMESPACE = "nhr"
# How often the driver looks at the progress a global unit reported (design: prompts).
PROGRESS_POLL_S = 1.0
# A slot not given back this long after its request's timeout belonged to a dead replica.
SLOT_LEASE_MARGIN_S = 30.0


# -- one place for what all replicas share: API limits and failure watches ---------------------


class _SharedLimits:
    """One model's API limits for every replica: concurrency slots as leased tickets (a
    replica that dies holding one does not keep it past its lease), and the per-minute
    budgets and Retry-After pause of `LocalLimiter`. Runs on the coordinator's event loop."""

    def __init__(self, limits: Any) -> None:
        self.limits = limits
        self.lease_s = limits.timeout_s + SLOT_LEASE_MARGIN_S
        self.budgets = LocalLimiter(limits)
        self.held: dict[int, float] = {}  # ticket -> when the slot is reclaimed
        self.tickets = 0
        self.peak = 0  # most slots held at once
        self._turn = asyncio.Lock()  # slots go first come, first served
        self._freed = asyncio.Event()

    async def acquire(self, tokens: int) -> int:
        async with self._turn:
            while True:
                now = time.monotonic()
                for ticket in [t for t, until in self.held.items() if until <= now]:
                    del self.held[ticket]  # its replica died without giving it back
                if len(self.held) < self.limits.max_concurrency:
                    break
                self._freed.clear()
                reclaim = min(self.held.values()) - now  # inf: all wait for their budgets
                try:
                    await asyncio.wait_for(
                        self._freed.wait(), None if math.isinf(reclaim) else reclaim
                    )
                except TimeoutError:
                    pass
            ticket = self.tickets = self.tickets + 1
            self.held[ticket] = math.inf  # held while it waits for the budgets
            self.peak = max(self.peak, len(self.held))
        try:
            await self.budgets.wait_for_budgets(tokens)
        except BaseException:
            self.release(ticket, 0.0)
            raise
        self.held[ticket] = time.monotonic() + self.lease_s
        return ticket

    def release(self, ticket: int, unused_tokens: float) -> None:
        if self.held.pop(ticket, None) is not None:
            self._freed.set()
        self.budgets.give_back_tokens(unused_tokens)


class Coordinator:
    """An async actor per run, owned by the driver: the API limits of each model config
    (`limits_scope`) and the `FailureTally` of each stage, for all replicas at once. A
    request costs one round trip here (~1 ms, against API calls of 100s of ms); a failure
    report one per batch, and none once its role is disarmed."""

    def __init__(self, stop_after_failures: int, limits: dict[str, Any]) -> None:
        self.stop_after_failures = stop_after_failures
        self.limits = limits
        self.shared: dict[str, _SharedLimits] = {}  # built on the actor's loop
        self.tallies: dict[str, FailureTally] = {}
        self.progress: Counter[str] = Counter()  # per stage: what its global unit counted

    def _scope(self, scope: str) -> _SharedLimits:
        if scope not in self.shared:
            self.shared[scope] = _SharedLimits(self.limits[scope])
        return self.shared[scope]

    async def acquire(self, scope: str, tokens: int) -> int:
        return await self._scope(scope).acquire(tokens)

    async def release(self, scope: str, releases: list[tuple[int, float]]) -> None:
        """Give slots back: (ticket, unused tokens) each."""
        limits = self._scope(scope)
        for ticket, unused_tokens in releases:
            limits.release(ticket, unused_tokens)

    async def pause(self, scope: str, seconds: float) -> None:
        self._scope(scope).budgets.pause(seconds)

    async def slots_report(self) -> dict[str, dict[str, int]]:
        """Per scope: tickets granted, most slots held at once, slots held now."""
        return {
            scope: {"granted": limits.tickets, "peak": limits.peak, "held": len(limits.held)}
            for scope, limits in self.shared.items()
        }

    def _tally(self, stage: str) -> FailureTally:
        if stage not in self.tallies:
            self.tallies[stage] = FailureTally(self.stop_after_failures)
        return self.tallies[stage]

    async def record(self, stage: str, role: str, outcomes: list) -> tuple[Any, bool]:
        """Add a replica's item outcomes: (the streak that broke the backend or None, whether
        the role is disarmed for good)."""
        tally = self._tally(stage)
        return tally.add(role, outcomes), tally.disarmed(role)

    async def undecided(self, stage: str) -> bool:
        return self._tally(stage).undecided()

    async def add_progress(self, stage: str, count: int) -> None:
        self.progress[stage] += count

    async def progress_of(self, stage: str) -> int:
        return self.progress[stage]


class _RemoteProgress:
    """A global unit's `ctx.progress` on an actor: counts add up here and go to the
    coordinator at most every `REPORT_EVERY_S` (one message, not one per prompt); `flush`
    sends the rest and waits, so the driver's last look sees everything."""

    REPORT_EVERY_S = 0.5

    def __init__(self, coordinator: Any, stage: str) -> None:
        self.coordinator, self.stage = coordinator, stage
        self.pending = 0
        self.sent_at = time.monotonic()

    def add(self, count: int) -> None:
        self.pending += count
        if time.monotonic() - self.sent_at >= self.REPORT_EVERY_S:
            self.coordinator.add_progress.remote(self.stage, self.pending)
            self.pending, self.sent_at = 0, time.monotonic()

    def flush(self) -> None:
        if self.pending:
            ray.get(self.coordinator.add_progress.remote(self.stage, self.pending))
            self.pending = 0


class _RemoteLimiter:
    """A replica's side of `_SharedLimits`: a `Limiter` for its API runner (on the runner's
    event loop) that asks the coordinator. It never asks for more slots than the whole limit,
    and gives slots back without waiting for an answer, the slots freed in one turn of the
    loop in one message."""

    def __init__(self, coordinator: Any, scope: str, limits: Any) -> None:
        self.coordinator = coordinator
        self.scope = scope
        self._asking = asyncio.Semaphore(limits.max_concurrency)
        self._releases: list[tuple[int, float]] = []

    async def acquire(self, tokens: int) -> int:
        await self._asking.acquire()
        try:
            return await self.coordinator.acquire.remote(self.scope, tokens)
        except BaseException:
            self._asking.release()
            raise

    def release(self, ticket: int, unused_tokens: float) -> None:
        self._asking.release()
        self._releases.append((ticket, unused_tokens))
        if len(self._releases) == 1:
            asyncio.get_running_loop().call_soon(self._send_releases)

    def _send_releases(self) -> None:
        releases, self._releases = self._releases, []
        self.coordinator.release.remote(self.scope, releases)

    def pause(self, seconds: float) -> None:
        self.coordinator.pause.remote(self.scope, seconds)


class _SharedWatch(FailureWatch):
    """A stage's `FailureWatch` whose tally is the coordinator's: the first `limit` items the
    stage sent to a role, from all replicas together, decide, as in one process."""

    def __init__(self, stage: str, limit: int, coordinator: Any) -> None:
        super().__init__(stage, limit)
        self.coordinator = coordinator
        self._disarmed: set[str] = set()  # roles that can no longer stop the stage

    def _add(self, role: str, outcomes: list[tuple[str, str] | None]):
        if role in self._disarmed:
            return None
        broken, disarmed = ray.get(self.coordinator.record.remote(self.stage, role, outcomes))
        if disarmed:
            self._disarmed.add(role)
        return broken

    def undecided(self) -> bool:
        if self.limit <= 0:
            return False
        return ray.get(self.coordinator.undecided.remote(self.stage))


def shared_limit_scopes(config: NhrConfig) -> dict[str, Any]:
    """The limits of every API-backed model of the config, by `limits_scope` (one entry for
    roles that share a model config, as they share one backend)."""
    scopes = {}
    for role in type(config.models).model_fields:
        model = getattr(config.models, role)
        if getattr(model, "limits", None) is not None:
            scopes[limits_scope(model)] = model.limits
    return scopes


class RoleWorker:
    """One replica of a model role: a BackendPool and a StageAdapter in this process."""

    def __init__(self, config: NhrConfig, root: str, coordinator: str) -> None:
        # looked up by name: a handle passed while the coordinator is still being created
        # would make Ray keep this actor's arguments in the object store (bad for restarts)
        coordinator = self.coordinator = ray.get_actor(coordinator, namespace=NAMESPACE)
        scopes = shared_limit_scopes(config)
        # before any backend is built: API backends here take their limits from the coordinator
        share_limits(
            lambda scope, limits: (
                _RemoteLimiter(coordinator, scope, limits)
                if scope in scopes
                else LocalLimiter(limits)
            )
        )
        self.store = RunStore(root)
        self.backends = BackendPool(config, self.store)
        self.adapter = StageAdapter(config, self.store, self.backends)
        self.limit = config.retry.stop_after_failures
        self.watches: dict[str, Any] = {}
        self._reported: Counter[str] = Counter()  # model loads already put into a marker

    def setup(self, role: str) -> dict[str, Any]:
        """Load the role's model, and warm up table reading, while the previous stage still
        runs (pools start ahead), not in the first unit; returns where this actor runs. An
        error here (a model that cannot load) comes back with the first unit, raised there
        again by the lazy load. (A restarted actor skips it: its first unit loads.)"""
        _warm_up_tables()
        self.backends.get(role)
        return self.describe()

    def _loads(self, marker: dict[str, Any]) -> dict[str, Any]:
        """Count the models this actor loaded since its last marker (setup included)."""
        loads = Counter(self.backends.loads) - self._reported
        self._reported = Counter(self.backends.loads)
        marker.pop("model_loads", None)
        if loads:
            marker["model_loads"] = dict(sorted(loads.items()))
        return marker

    def describe(self) -> dict[str, Any]:
        """Where this actor runs: pid, node and the GPUs Ray gave it."""
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def _watch(self, stage: str) -> FailureWatch:
        if stage not in self.watches:
            self.watches[stage] = _SharedWatch(stage, self.limit, self.coordinator)
        return self.watches[stage]

    def run_shard(self, stage: str, shard: int) -> dict[str, Any]:
        watch = self._watch(stage)
        marker = self._loads(self.adapter.run_shard(stage, shard, watch))
        return {"marker": marker, "undecided": watch.undecided()}

    def run_global(self, stage: str) -> dict[str, Any]:
        progress = _RemoteProgress(self.coordinator, stage)
        try:
            marker = self.adapter.run_global(stage, self._watch(stage), progress.add)
        finally:
            progress.flush()
        return {"marker": self._loads(marker), "undecided": False}


def _warm_up_tables() -> None:
    """Write and read a tiny zstd parquet table: the first one costs a process ~0.2 s of CPU,
    paid here while the previous stage runs instead of at the start of a unit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["a"], "values": [[1.0]]}), sink, compression="zstd")
    table_from_bytes(sink.getvalue().to_pybytes()).to_pylist()


def _unwrap(error: RayTaskError) -> BaseException:
    """The exception the unit raised, as it was raised (a BrokenBackendError stays one)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


class _Pool:
    """The actors serving one model role."""

    def __init__(self, executor: RayExecutor, role: str) -> None:
        model = getattr(executor.config.models, role)
        self.role = role
        self.executor = executor
        self.options: dict[str, Any] = {
            "num_cpus": model.cpus,
            "num_gpus": model.gpus,
            "max_restarts": MAX_RESTARTS,
            "max_task_retries": MAX_RESTARTS,
            "namespace": NAMESPACE,
        }
        if model.memory_gb is not None:
            self.options["memory"] = int(model.memory_gb * 1024**3)
        # setup results (where each actor runs), read when the pool stops: work starts as soon
        # as the first actor is up
        self._setups: list[Any] = [None] * model.replicas
        self.actors = [self._start(index) for index in range(model.replicas)]
        self.generations = [0] * model.replicas

    def _start(self, index: int, generation: int = 0):
        name = f"{self.executor.token}:{self.role}:{index}:{generation}"
        remote = self.executor.worker_class.options(name=name, **self.options)
        executor = self.executor
        actor = remote.remote(executor.config, str(executor.store.root), executor.coordinator_name)
        self._setups[index] = actor.setup.remote(self.role)
        return actor

    def replace(self, index: int) -> None:
        """Ray gave up on this actor: start a new one in its place."""
        try:
            ray.kill(self.actors[index], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.generations[index] += 1
        self.actors[index] = self._start(index, self.generations[index])

    def describe(self) -> list[dict[str, Any]]:
        """Where the pool's first actors ran (pid, node, GPU ids); {} for one never started."""
        places = []
        for ref in self._setups:
            try:
                places.append(ray.get(ref, timeout=30))
            except Exception:  # noqa: BLE001 - an actor killed or never placed
                places.append({})
        return places

    def described_ok(self) -> bool:
        """True once every actor answered where it runs (a pool that never ran is skipped)."""
        ready, _ = ray.wait(self._setups, num_returns=len(self._setups), timeout=0)
        return len(ready) == len(self._setups)

    def stop(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


class RayExecutor(Executor):
    name = "ray"
    streams_progress = True  # a global unit's own count comes through the coordinator

    def __init__(
        self,
        config: NhrConfig,
        store: RunStore,
        show_progress: bool = True,
        address: str | None = None,
    ) -> None:
        super().__init__(config, store, show_progress)
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        self.token = f"nhr-{uuid.uuid4().hex[:8]}"  # names this run's actors
        self.worker_class = ray.remote(RoleWorker)  # exported to the cluster once per run
        # API limits and failure watches shared by all replicas; owned by this driver, so it
        # goes with it (a rerun starts afresh)
        self.coordinator_name = f"{self.token}:coordinator"
        self.coordinator = (
            ray.remote(Coordinator)
            .options(
                name=self.coordinator_name,
                namespace=NAMESPACE,
                num_cpus=0,
                max_restarts=MAX_RESTARTS,
                max_task_retries=MAX_RESTARTS,
            )
            .remote(config.retry.stop_after_failures, shared_limit_scopes(config))
        )
        self.pools: dict[str, _Pool] = {}
        # role -> where its actors ran (pid, node, GPU ids), for `MineResult.details`
        self.placements: dict[str, list[dict[str, Any]]] = {}
        # limits scope -> API requests let through, and the most in flight at once
        self.api_slots: dict[str, dict[str, int]] = {}
        self._driver: StageAdapter | None = None

    # -- pools ----------------------------------------------------------------------------
    def _pool(self, role: str) -> _Pool:
        if role not in self.pools:
            self.pools[role] = _Pool(self, role)
        return self.pools[role]

    def _stop(self, role: str) -> None:
        pool = self.pools.pop(role)
        if pool.described_ok():
            self.placements[role] = pool.describe()
        pool.stop()

    def _prestart(self, position: int) -> None:
        """Start the pool of the next stage that needs a new one, without waiting for it."""
        for stage in self.stages[position + 1 :]:
            if stage.roles:
                if stage.roles[0] not in self.pools:
                    self.pools[stage.roles[0]] = _Pool(self, stage.roles[0])
                return

    def stage_finished(self, position: int) -> None:
        later = {stage.roles[0] for stage in self.stages[position + 1 :] if stage.roles}
        for role in [role for role in self.pools if role not in later]:
            self._stop(role)

    def close(self) -> None:
        for role in list(self.pools):
            self._stop(role)
        try:
            self.api_slots = ray.get(self.coordinator.slots_report.remote(), timeout=10)
            ray.kill(self.coordinator, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        if self._owns_ray:
            ray.shutdown()

    def details(self) -> dict[str, Any]:
        return {**super().details(), "placements": self.placements, "api_slots": self.api_slots}

    def _driver_adapter(self) -> StageAdapter:
        if self._driver is None:  # stages without a model: no backend is ever built here
            self._driver = StageAdapter(self.config, self.store, BackendPool(self.config))
        return self._driver

    # -- units ----------------------------------------------------------------------------
    def run_global(self, stage: Stage) -> None:
        position = self.stages.index(stage)
        bar = self.progress(stage, 1)
        try:
            if stage.roles:
                pool = self._pool(stage.roles[0])
                self._prestart(position)
                unit = pool.actors[0].run_global.remote(stage.name)
                marker = self._await_global(unit, stage.name, bar)["marker"]
            else:
                self._prestart(position)
                # in the driver, one shard at a time (the adapter streams global stages)
                progress = bar.items if bar is not None else None
                marker = self._driver_adapter().run_global(stage.name, self.watch(stage), progress)
            if bar is not None:
                if not bar.counts_items:  # the unit's model calls, as the shard bars show
                    bar.items(marker["stats"].get("model_calls", 0))
                bar.shard_done()
        finally:
            if bar is not None:
                bar.close()
        self.store.mark_done(stage.name, None, marker)

    def _await_global(self, unit: Any, stage: str, bar: Any) -> dict[str, Any]:
        """The result of a global unit; meanwhile a bar that counts the stage's own progress
        (design: prompts) follows what the unit reported to the coordinator."""
        shown = 0
        while True:
            done, _ = ray.wait([unit], timeout=PROGRESS_POLL_S)
            if bar is not None and bar.counts_items:
                counted = ray.get(self.coordinator.progress_of.remote(stage))
                bar.items(counted - shown)
                shown = counted
            if done:
                try:
                    return ray.get(unit)
                except RayTaskError as error:
                    raise _unwrap(error) from None

    def run_shards(self, stage: Stage, shards: list[int]) -> None:
        position = self.stages.index(stage)
        bar = self.progress(stage, len(shards))
        try:
            if not stage.roles:
                self._prestart(position)
                self._run_in_driver(stage, shards, bar)
            else:
                pool = self._pool(stage.roles[0])
                self._prestart(position)
                self._run_on_pool(stage, shards, pool, bar)
        finally:
            if bar is not None:
                bar.close()

    def _run_in_driver(self, stage: Stage, shards: list[int], bar) -> None:
        watch = self.watch(stage)
        markers = DeferredMarkers(self.store, watch)
        adapter = self._driver_adapter()
        for shard in shards:
            marker = adapter.run_shard(stage.name, shard, watch)
            markers.mark_done(stage.name, shard, marker)
            self._tick(bar, marker)
        markers.flush()

    @staticmethod
    def _tick(bar, marker: dict[str, Any]) -> None:
        if bar is not None:
            bar.items(marker["stats"].get("model_calls", 0))
            bar.shard_done()

    def _unit_size(self, stage: Stage, shard: int) -> int:
        """Rows the shard feeds the stage, read from the markers of its last input (the
        table that drives it: edit's jobs, validate's pre-filter survivors)."""
        source = stage.reads[-1]
        marker = self.store.read_marker(source, shard)
        if marker is not None:
            return int(marker.get("stats", {}).get("rows_out", marker.get("rows", 0)))
        table_rows = (self.store.read_marker(source) or {}).get("table_rows") or []
        return int(table_rows[shard]) if shard < len(table_rows) else 0

    def _run_on_pool(self, stage: Stage, shards: list[int], pool: _Pool, bar) -> None:
        # largest units first, so no actor is left with a big one at the end of the stage
        if stage.reads:
            sizes = {shard: self._unit_size(stage, shard) for shard in shards}
            shards = sorted(shards, key=lambda shard: (-sizes[shard], shard))
        queue = deque(shards)
        in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (actor index, shard)
        resubmits: dict[int, int] = {}
        # one watch for the stage across the actors (the coordinator's), so one set of
        # deferred markers: they wait while the actors report the watch undecided
        markers = DeferredMarkers(self.store)

        def submit(index: int) -> None:
            if queue:
                shard = queue.popleft()
                ref = pool.actors[index].run_shard.remote(stage.name, shard)
                in_flight[ref] = (index, shard)

        for index in range(len(pool.actors)):
            submit(index)
        try:
            while in_flight:
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                index, shard = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as error:
                    raise _unwrap(error) from None
                except RayActorError:
                    resubmits[shard] = resubmits.get(shard, 0) + 1
                    if resubmits[shard] > MAX_RESUBMITS:
                        raise
                    log.warning("a %s worker died; its shard %d runs again", pool.role, shard)
                    pool.replace(index)
                    queue.appendleft(shard)
                    submit(index)
                    continue
                markers.mark_done(
                    stage.name, shard, result["marker"], undecided=result["undecided"]
                )
                self._tick(bar, result["marker"])
                submit(index)
        finally:
            for ref in in_flight:  # the run stopped: drop the other units (not committed)
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - already finished or its actor gone
                    pass
        markers.flush()
