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

Before that line it prints the driver's peak memory at 1x and 4x the prompts,

    driver rss ratio 4x/1x: N.NN

from two runs of `nhr mine --executor ray` as their own processes (the driver alone: the
workers are the cluster's processes), connected to the cluster this script started, with a
large job pool per prompt (1 image, 64 editor seeds per pair) and a small fixed budget, so
the rows the driver would hold grow with the prompts while the work after schedule does not.

    python benchmarks/ray_scaling.py [--prompts 64] [--latency 0.2] [--rss-prompts 400]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
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


def rss_config(prompts: int) -> dict:
    data = quickstart()
    data["run"].update(prompts=prompts, shard_size=8)
    data["generate"]["images_per_prompt"] = 1
    data["models"]["generator"]["scale"] = 0.0625  # tiny images: the rows are what we measure
    data["schedule"]["seeds_per_pair"] = 64  # ~200 jobs per prompt, most over budget
    data["schedule"]["budget"] = {"edits": 64}
    data["invert"] = {"enabled": False}
    data["compose"] = {"enabled": False}
    return data


def driver_peak_rss(prompts: int, address: str) -> tuple[float, int]:
    """(peak resident MiB of an `nhr mine --executor ray` process, its schedule jobs)."""
    import json

    import yaml

    work = Path(tempfile.mkdtemp(prefix=f"nhr-ray-rss-{prompts}-"))
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(rss_config(prompts)))
    command = [sys.executable, "-m", "nhr.cli", "mine", str(config_path), "--run-dir"]
    command += [str(work / "run"), "--executor", "ray", "--ray-address", address]
    command += ["--no-progress", "--skip-preflight"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]

    def watch() -> None:  # VmHWM: the process's own peak resident set, read while it lives
        status = Path(f"/proc/{driver.pid}/status")
        while driver.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                break
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    _, errors = driver.communicate()
    watcher.join()
    if driver.returncode != 0:
        raise SystemExit(f"nhr mine failed ({driver.returncode}):\n{errors.decode()[-2000:]}")
    marker = json.loads((work / "run" / "stages" / "schedule" / "_SUCCESS.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return peak[0] / 1024, sum(marker["table_rows"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--rss-prompts", type=int, default=400, help="the 1x of the rss ratio")
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
    efficiency = throughput[8] / (8 * throughput[1])
    print(f"(total {time.perf_counter() - started:.0f} s; {len(reference)} triplets each run)")
    address = ray.get_runtime_context().gcs_address
    rss = {}
    for scale in (1, 4):
        rss[scale], jobs = driver_peak_rss(scale * args.rss_prompts, address)
        print(
            f"driver {scale}x: {scale * args.rss_prompts} prompts, {jobs} jobs, "
            f"peak rss {rss[scale]:.0f} MiB"
        )
    ray.shutdown()
    print(f"driver rss ratio 4x/1x: {rss[4] / rss[1]:.2f}")
    print(f"scaling efficiency at 8 replicas: {efficiency:.2f}")


if __name__ == "__main__":
    main()
