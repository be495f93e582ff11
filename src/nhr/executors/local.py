"""The default executor: every stage in this process, the run directory on local disk.

Stage by stage, shard by shard: run the unit through the stage adapter (read the shard's
inputs, run the stage, write its table), then write its completion marker. A shard with a
marker is skipped (unless a table it read has changed since: its marker records their
digests), so re-running the same command resumes a killed run, and because ids and seeds are
deterministic the result is the same as an uninterrupted run. Before that,
`nhr.run.prepare_run_dir` has damaged shards redone (nhr/verify.py).
"""

from __future__ import annotations

from nhr.config import NhrConfig
from nhr.executors.base import BackendPool, DeferredMarkers, Executor, StageAdapter
from nhr.stages.base import Stage
from nhr.store import RunStore


class LocalExecutor(Executor):
    """Units run one after another in this process, all sharing one BackendPool."""

    name = "local"
    streams_progress = True

    def __init__(self, config: NhrConfig, store: RunStore, show_progress: bool = True) -> None:
        super().__init__(config, store, show_progress)
        self.backends = BackendPool(config, store)
        self.adapter = StageAdapter(config, store, self.backends)

    def run_shards(self, stage: Stage, shards: list[int]) -> None:
        bar = self.progress(stage, len(shards))
        watch = self.watch(stage)  # one for all shards: judges the stage's first items
        markers = DeferredMarkers(self.store, watch)
        try:
            for shard in shards:
                progress = bar.items if bar is not None else None
                marker = self.adapter.run_shard(stage.name, shard, watch, progress)
                markers.mark_done(stage.name, shard, marker)
                if bar is not None:
                    bar.shard_done()
            markers.flush()
        finally:
            if bar is not None:
                bar.close()

    def run_global(self, stage: Stage) -> None:
        bar = self.progress(stage, 1)
        try:
            progress = bar.items if bar is not None else None
            marker = self.adapter.run_global(stage.name, self.watch(stage), progress)
            if bar is not None:
                bar.shard_done()
        finally:
            if bar is not None:
                bar.close()
        self.store.mark_done(stage.name, None, marker)

    def stage_finished(self, position: int) -> None:
        later_roles = {role for s in self.stages[position + 1 :] for role in s.roles}
        self.backends.keep_only(later_roles)
