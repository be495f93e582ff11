"""How the Ray executor scales with replicas on latency-bound work.

Mines one simulator run per replica count (1, 2, 4, 8) with 200 ms of simulated latency per
edit item and per validator item (`faults.latency_s` is slept once per item the simulator
answers), the editor and the validator each on that many replicas, and prints per replica
count the wall time of the edit and validate stages (as the driver saw them) and their
throughput in items per second, then

    scaling efficiency at 8 replicas: 0.NN     (throughput(8) / (8 x throughput(1)))

The work waits on simulated models, not on the CPUs, so the scaling is measurable on a 2-core
machine. Every run mines the same dataset (checked). Inversion is off to keep it short: it
adds validator work outside the two measured stages.

    python benchmarks/ray_scaling.py [--prompts 64] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import quickstart

import nhr

REPLICAS = (1, 2, 4, 8)
MEASURED = ("edit", "validate")


def config(prompts: int, latency: float, replicas: int) -> dict:
    data = quickstart()
    data["run"].update(prompts=prompts, shard_size=1)  # many small units to spread
    data["generate"]["images_per_prompt"] = 2
    data["schedule"]["seeds_per_pair"] = 2
    data["invert"] = {"enabled": False}
    for role in ("editor", "validator"):
        data["models"][role].update(replicas=replicas, cpus=0.5, faults={"latency_s": latency})
    return data


def measure(prompts: int, latency: float, replicas: int) -> tuple[float, int, list]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"nhr-ray-scaling-{replicas}-"))
    result = nhr.mine(config(prompts, latency, replicas), run_dir, preflight=False, executor="ray")
    seconds = sum(result.details["stage_seconds"][stage] for stage in MEASURED)
    stages = {entry["stage"]: entry for entry in result.stats["stages"]}
    items = sum(stages[stage]["model_calls"] for stage in MEASURED)
    loads = result.stats["model_loads"]
    assert loads.get("editor") == replicas and loads.get("validator") == replicas, loads
    released = [row["sample_id"] for row in _released(run_dir)]
    shutil.rmtree(run_dir, ignore_errors=True)
    return seconds, items, released


def _released(run_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    files = sorted((run_dir / "dataset" / "data").glob("train-*.parquet"))
    return [row for path in files for row in pq.read_table(path, columns=["sample_id"]).to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()

    import ray

    # 8 editor and 8 validator actors at 0.5 CPU each, plus the other roles' pools, on a
    # 2-core machine: the work is sleeping on simulated latency, not computing, so we declare
    # 16 logical CPUs (Ray's CPU count is a scheduling token, not a core). With num_cpus=2
    # Ray could place only four 0.5-CPU actors at once and the 8-replica pools would queue.
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    throughput = {}
    reference = None
    for replicas in REPLICAS:
        seconds, items, released = measure(args.prompts, args.latency, replicas)
        reference = reference if reference is not None else released
        assert released == reference, "the dataset changed with the replica count"
        throughput[replicas] = items / seconds
        print(
            f"replicas {replicas}: edit+validate {seconds:6.1f} s, {items} items, "
            f"{throughput[replicas]:5.2f} items/s"
        )
    ray.shutdown()
    efficiency = throughput[8] / (8 * throughput[1])
    print(f"(total {time.perf_counter() - started:.0f} s; {len(reference)} triplets each run)")
    print(f"scaling efficiency at 8 replicas: {efficiency:.2f}")


if __name__ == "__main__":
    main()
