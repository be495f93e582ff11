"""The budget draw in two passes over the shards picks exactly the jobs of the one-pass draw.

The schedule once built every job of the run in one list and sorted it (a dict of ~1 KB per
job, in the driver under Ray). It now counts jobs per priority bucket, reads only the jobs
near the cutoff, and marks each shard against the cutoff; these tests hold it to the one-pass
draw (`draw_jobs`, the reference), ties and float sums included, and check that its memory
does not grow with the run.
"""

import random
import shutil
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import small_config_dict
from nhr import records
from nhr.backends.sim import SimBackend
from nhr.backends.sim.config import SimBackendConfig
from nhr.config import BudgetSection, parse_config
from nhr.executors.base import BackendPool, StageAdapter
from nhr.ids import derive_seed, stable_id, unit_interval
from nhr.scheduler import KEY, bucket_of, draw_jobs, find_cutoff, histogram, job_cost, job_key
from nhr.stages.base import ShardInputs, StageContext
from nhr.stages.design import DesignStage
from nhr.stages.schedule import ScheduleStage
from nhr.store import RunStore

BUDGETS = [
    BudgetSection(),
    BudgetSection(edits=1),
    BudgetSection(edits=37),
    BudgetSection(edits=10_000),
    BudgetSection(cost=0.1, cost_per_edit=0.5),  # not even one job
    BudgetSection(cost=41.3, cost_per_edit=0.1, cost_per_megapixel=1.0),
    BudgetSection(cost=0.3, cost_per_edit=0.1),  # 0.1 + 0.1 + 0.1 > 0.3 in floats: the tolerance
    BudgetSection(edits=25, cost=41.3, cost_per_edit=0.1, cost_per_megapixel=1.0),
    BudgetSection(cost=1e6, cost_per_edit=0.1),  # every job
]


def synthetic_jobs(seed: int, shards: int, ties: bool) -> list[list[dict]]:
    """Jobs per shard with varied costs; `ties`: few distinct priorities and repeated job ids,
    so equal keys meet at the cutoff."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(shards):
        shard = []
        for _ in range(rng.randrange(0, 30)):
            if ties:
                job_id = f"{rng.randrange(40):016x}"
                priority = rng.randrange(8) / 8
            else:
                job_id = f"{rng.getrandbits(64):016x}"
                priority = unit_interval(seed, "schedule", job_id)
            shard.append(
                {"job_id": job_id, "priority": priority, "cost": rng.choice([0.1, 0.7, 1.3])}
            )
        jobs.append(shard)
    return jobs


def two_pass_draw(shards: list[list[dict]], budget: BudgetSection) -> tuple[list[bool], int]:
    """Which jobs the cutoff takes, and how many passes over the shards it read."""
    keys = [
        np.array(
            [(j["priority"], int(j["job_id"], 16), s, i, j["cost"]) for i, j in enumerate(jobs)],
            dtype=KEY,
        )
        for s, jobs in enumerate(shards)
    ]
    passes = []

    def jobs_in(lo, hi):
        passes.append((lo, hi))
        return np.concatenate(
            [k[(bucket_of(k["priority"]) >= lo) & (bucket_of(k["priority"]) < hi)] for k in keys]
        )

    counts = sum(histogram(k["priority"]) for k in keys)
    # small groups: a cost budget is summed over several passes
    cutoff = find_cutoff(counts, jobs_in, budget, group_jobs=16)
    taken = [
        cutoff.takes(job_key(j["priority"], j["job_id"], s, i))
        for s, jobs in enumerate(shards)
        for i, j in enumerate(jobs)
    ]
    return taken, len(passes)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("budget", BUDGETS, ids=str)
def test_cutoff_takes_exactly_the_jobs_of_the_one_pass_draw(budget, ties):
    for seed in range(5):
        shards = synthetic_jobs(seed, shards=9, ties=ties)
        expected, _ = draw_jobs([job for shard in shards for job in shard], budget)
        taken, passes = two_pass_draw(shards, budget)
        assert taken == expected
        if budget.cost is None:
            assert passes <= 1  # a count budget reads one bucket at most


def one_pass_schedule(config, inputs: dict) -> tuple[dict[int, list[dict]], dict]:
    """The schedule stage as it was before the two passes: every job of the run in one list."""
    seed = config.run.seed
    jobs_by_shard, all_jobs, rows_in = {}, [], 0
    for shard in sorted(inputs["design"]):
        prompts = {p["prompt_id"]: p for p in inputs["design"][shard]}
        sources = {s["source_id"]: s for s in inputs["generate"][shard]}
        jobs = jobs_by_shard.setdefault(shard, [])
        for gate_row in inputs["plausibility"][shard]:
            if gate_row["status"] != "ok":
                continue
            rows_in += 1
            source = sources[gate_row["source_id"]]
            cost = job_cost(config.schedule.budget, source["width"], source["height"])
            for edit in prompts[gate_row["prompt_id"]]["edits"]:
                for seed_index in range(config.schedule.seeds_per_pair):
                    job_id = stable_id(source["source_id"], edit["edit_id"], seed_index)
                    jobs.append(
                        {
                            "job_id": job_id,
                            "source_id": source["source_id"],
                            "prompt_id": source["prompt_id"],
                            "edit_id": edit["edit_id"],
                            "instruction": edit["instruction"],
                            "operation": edit["operation"],
                            "composite": edit["composite"],
                            "seed_index": seed_index,
                            "editor_seed": derive_seed(seed, "edit", job_id),
                            "priority": unit_interval(seed, "schedule", job_id),
                            "cost": cost,
                        }
                    )
        all_jobs.extend(jobs)
    chosen, _ = draw_jobs(all_jobs, config.schedule.budget)
    for job, keep in zip(all_jobs, chosen):
        job["status"], job["reason"] = ("ok", None) if keep else ("dropped", "over_budget")
    kept = sum(chosen)
    stats = {"rows_in": rows_in, "rows_out": kept, "dropped": {"over_budget": len(chosen) - kept}}
    return jobs_by_shard, stats


def shard_inputs(shard: int, prompts: int = 6) -> dict[str, list[dict]]:
    """One shard's design, generate and plausibility rows, made up (some gates fail, sizes
    vary so job costs do)."""
    rng = random.Random(shard)
    design, generate, gates = [], [], []
    for p in range(prompts):
        prompt_id = f"p{shard}-{p}"
        edits = [
            {
                "edit_id": f"{prompt_id}-e{k}",
                "instruction": f"edit {k}",
                "operation": "add_object",
                "composite": k == 2,
            }
            for k in range(rng.randrange(1, 4))
        ]
        design.append({"prompt_id": prompt_id, "edits": edits})
        for i in range(2):
            source_id = f"{prompt_id}-s{i}"
            size = rng.choice([(512, 512), (1024, 768), (1024, 1024)])
            generate.append(
                {
                    "source_id": source_id,
                    "prompt_id": prompt_id,
                    "width": size[0],
                    "height": size[1],
                }
            )
            status = "ok" if rng.random() < 0.8 else "dropped"
            gates.append({"source_id": source_id, "prompt_id": prompt_id, "status": status})
    return {"design": design, "generate": generate, "plausibility": gates}


def schedule_config(budget: dict):
    return parse_config(small_config_dict(schedule={"seeds_per_pair": 3, "budget": budget}))


def table_bytes(rows: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=records.JOB), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    "budget",
    [
        {"edits": None},
        {"edits": 1},
        {"edits": 123},
        {"cost": 77.7, "cost_per_edit": 0.25, "cost_per_megapixel": 1.0},
        {"edits": 80, "cost": 77.7, "cost_per_edit": 0.25, "cost_per_megapixel": 1.0},
        {"cost": 30.3, "cost_per_edit": 0.1, "cost_per_megapixel": 0.0},
    ],
    ids=str,
)
def test_schedule_tables_and_stats_are_those_of_the_one_pass_schedule(budget):
    config = schedule_config(budget)
    count = 11
    reads = []

    def read(shard):
        reads.append(shard)
        return shard_inputs(shard)

    every = {name: {s: shard_inputs(s)[name] for s in range(count)} for name in ScheduleStage.reads}
    expected, expected_stats = one_pass_schedule(config, every)
    ctx = StageContext(config=config, images=None, backends=lambda role: None)
    produced = list(ScheduleStage().run(ctx, ShardInputs(count, read)))
    assert [shard for shard, _ in produced] == list(range(count))
    for shard, rows in produced:
        assert table_bytes(rows) == table_bytes(expected[shard])
    stats = ctx.stats.to_dict()
    assert {key: stats[key] for key in expected_stats} == {
        **expected_stats,
        "dropped": {k: v for k, v in expected_stats["dropped"].items() if v},
    }
    assert 0 < expected_stats["rows_out"]
    # every pass reads the shards in order, one at a time
    assert reads == list(range(count)) * (len(reads) // count)


def peak_bytes(shards: int, budget: dict) -> int:
    config = schedule_config(budget)
    ctx = StageContext(config=config, images=None, backends=lambda role: None)
    tracemalloc.start()
    try:
        for _ in ScheduleStage().run(
            ctx, ShardInputs(shards, lambda s: shard_inputs(s, prompts=4))
        ):
            pass  # each shard's rows are dropped, as the adapter does once it wrote them
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("budget", [{"edits": 500}, {"cost": 150.0, "cost_per_edit": 0.2}], ids=str)
def test_schedule_memory_does_not_grow_with_the_run(budget):
    small, large = peak_bytes(40, budget), peak_bytes(160, budget)
    # one shard's rows and the histogram, whatever the run (the one-pass schedule held every
    # job: its peak grew 4x here)
    assert large < 1.3 * small, (small, large)


class RecordingStore(RunStore):
    """A run store that records the order of table reads and writes."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.events: list[tuple[str, str, int]] = []

    def read_rows(self, stage, shard):
        self.events.append(("read", stage, shard))
        return super().read_rows(stage, shard)

    def write_rows(self, stage, shard, rows, schema):
        self.events.append(("write", stage, shard))
        return super().write_rows(stage, shard, rows, schema)


def test_global_stages_write_each_shard_before_reading_the_next(mined, tmp_path):
    run_dir, _ = mined
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = parse_config(small_config_dict(schedule={"budget": {"edits": 20}}))
    store = RecordingStore(str(copy))
    adapter = StageAdapter(config, store, BackendPool(config))
    marker = adapter.run_global("schedule")
    assert marker["shards"] == 4 and marker["stats"]["rows_out"] == 20
    assert sum(marker["table_rows"]) == sum(
        len(store.read_rows("schedule", shard)) for shard in range(4)
    )
    # the last pass reads a shard and writes its table before it reads the next one
    events = store.events[: store.events.index(("write", "schedule", 3)) + 1]
    last_pass = events[events.index(("write", "schedule", 0)) - 3 :]
    assert last_pass == [
        event
        for shard in range(4)
        for event in [("read", name, shard) for name in ScheduleStage.reads]
        + [("write", "schedule", shard)]
    ]


class CountingDesigner:
    def __init__(self) -> None:
        self.sim = SimBackend(SimBackendConfig(model="sim-llm"))
        self.calls = 0

    def info(self):
        return self.sim.info()

    def chat(self, requests):
        self.calls += 1
        return self.sim.chat(requests)


def test_design_yields_each_shard_once_it_is_complete():
    # 1 item per design batch: 3 rounds of design calls for 150 prompts
    config = parse_config(
        small_config_dict(run={"prompts": 150, "shard_size": 10}, design={"batch_size": 1})
    )
    designer = CountingDesigner()
    ctx = StageContext(config=config, images=None, backends=lambda role: designer)
    shards = DesignStage().run(ctx, None)
    first, rows = next(shards)
    assert (first, designer.calls) == (0, 1)  # written before the next round is asked
    assert [row["prompt_index"] for row in rows] == list(range(10))
    rest = list(shards)
    assert [shard for shard, _ in rest] == list(range(1, 15))
    assert designer.calls > 1 and ctx.stats.rows_out == 150
