"""Memory at the start of a run does not grow with run.prompts.

The design stage once built every design request of the run before its first call, so
`--prompts 100000000` took gigabytes and minutes before it wrote a checkpoint. It now asks in
bounded rounds and checkpoints each round before the next.
"""

import tracemalloc

import pytest

from conftest import small_config_dict
from nhr.backends.sim import SimBackend
from nhr.backends.sim.config import SimBackendConfig
from nhr.config import parse_config
from nhr.stages.base import StageContext
from nhr.stages.design import ROUND_BATCHES, DesignStage


class Stop(Exception):
    """Ends the run where a kill could (after the first checkpoint)."""


class Designer:
    """The simulated designer, which refuses a call far larger than a round: the defect this
    test guards against would otherwise spend hours designing before it failed."""

    def __init__(self) -> None:
        self.sim = SimBackend(SimBackendConfig(model="sim-llm"))
        self.calls: list[int] = []

    def info(self):
        return self.sim.info()

    def chat(self, requests):
        self.calls.append(len(requests))
        if len(requests) > 10 * ROUND_BATCHES:
            raise Stop(f"{len(requests)} design requests in one call")
        return self.sim.chat(requests)


def test_design_memory_is_bounded_and_checkpoints_come_early():
    config = parse_config(
        small_config_dict(run={"prompts": 10_000_000, "shard_size": 8}, design={"batch_size": 50})
    )
    saved: list[str] = []

    def save_checkpoint(key, value):
        saved.append(key)
        if len(saved) == ROUND_BATCHES:
            raise Stop("killed after the first round")

    designer = Designer()
    ctx = StageContext(
        config=config,
        images=None,
        backends=lambda role: designer,
        save_checkpoint=save_checkpoint,
    )
    tracemalloc.start()
    try:
        with pytest.raises(Stop):
            list(DesignStage().run(ctx, None))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert designer.calls == [ROUND_BATCHES]
    assert saved == [f"batch-{index:05d}" for index in range(ROUND_BATCHES)]
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # about 7 MiB today
