"""A Ray run whose driver is SIGKILLed in the middle of a stage resumes, on a rerun, to the
dataset a local run mines: same sample ids, image bytes and stage counts. The driver's actors
die with it (Ray ends a dead driver's job); the run directory's lock is an flock, released by
the kernel with the killed process, so the rerun is not refused."""

import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

import nhr  # noqa: E402
from helpers import mine_command, signature  # noqa: E402

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def small(editor_latency_s: float = 0.0) -> dict:
    """The quickstart at 8 prompts (4 shards); the editor's simulated latency slows the edit
    stage down without changing what it mines."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["run"].update(prompts=8, shard_size=2)
    data["models"]["editor"].update(replicas=2, cpus=0.25)
    if editor_latency_s:
        data["models"]["editor"]["faults"] = {"latency_s": editor_latency_s}
    return data


def counts(stats) -> list:
    return [(s["stage"], s["rows_in"], s["rows_out"]) for s in stats["stages"]]


def test_a_killed_ray_driver_resumes_to_the_same_dataset(ray_cluster, tmp_path):
    reference = nhr.mine(small(), tmp_path / "local", preflight=False)
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump(small(editor_latency_s=0.03), sort_keys=False))
    run_dir = tmp_path / "run"
    address = ray.get_runtime_context().gcs_address  # the test session's cluster
    command = [*mine_command(config, run_dir), "--executor", "ray", "--ray-address", address]
    driver = subprocess.Popen(
        [*command, "--skip-preflight"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    edit = run_dir / "stages" / "edit"
    deadline = time.monotonic() + 180
    while not list(edit.glob("*.done.json")) and driver.poll() is None:
        assert time.monotonic() < deadline, "the edit stage never committed a shard"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    assert driver.wait(timeout=30) == -signal.SIGKILL, driver.stderr.read().decode()[-2000:]
    committed = {path.name: path.read_bytes() for path in edit.glob("*.done.json")}
    assert 1 <= len(committed) < 4, "the driver was not killed within the edit stage"

    result = nhr.mine(str(config), run_dir, preflight=False, executor="ray")
    assert signature(run_dir) and signature(run_dir) == signature(reference.run_dir)
    assert counts(result.stats) == counts(reference.stats)
    # resumed, not redone: the shards committed before the kill were kept as they were
    assert all((edit / name).read_bytes() == data for name, data in committed.items())
