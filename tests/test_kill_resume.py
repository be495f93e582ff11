"""SIGKILL `nhr mine` at many points; re-running until it finishes gives the same dataset."""

import signal
import subprocess
import time

import pytest
import yaml

import nhr
from helpers import finish, kill_at_write, mine_command, signature


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_config):
    root = tmp_path_factory.mktemp("kill")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    nhr.mine(str(config), root / "reference")
    return config, signature(root / "reference")


@pytest.mark.parametrize(
    "pattern,occurrence",
    [
        ("/design/parts/", 1),  # a design batch checkpoint, half written
        ("generate/shard-00001.parquet", 1),  # mid-way through writing a shard table
        ("/images/", 40),  # an image, half written
        ("edit/shard-00002.done.json", 1),  # a completion marker
        ("select/shard-00003.parquet", 1),
        ("export-row", 3),  # while the dataset is being written
    ],
)
def test_kill_at_a_write_then_resume(setup, tmp_path, pattern, occurrence):
    config, reference = setup
    run_dir = tmp_path / "run"
    kill_at_write(config, run_dir, pattern, occurrence)
    finish(config, run_dir)
    assert signature(run_dir) == reference


def slow_config(small_config, tmp_path):
    """The same run, slowed down by simulated model latency (which changes no output), so a
    signal lands while it is working."""
    slow = small_config()
    for role in slow["models"].values():
        role.setdefault("faults", {})["latency_s"] = 0.02
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump(slow))
    return config


def test_kill_at_random_moments_then_resume(setup, tmp_path, small_config):
    _, reference = setup
    config = slow_config(small_config, tmp_path)
    run_dir = tmp_path / "run"
    for delay in (1.2, 1.9, 2.6, 3.3):
        process = subprocess.Popen(
            mine_command(config, run_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    finish(config, run_dir)
    assert signature(run_dir) == reference
    assert not list(run_dir.rglob("*.tmp"))  # partial files were cleaned up on resume


def test_sigterm_is_handled_like_ctrl_c(setup, tmp_path, small_config):
    """A scheduler's SIGTERM: the lock is released, one line says how to resume, exit 143."""
    fast_config, reference = setup
    config = slow_config(small_config, tmp_path)
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        mine_command(config, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not (run_dir / "stages" / "generate").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    stderr = process.stderr.read()
    assert "nhr: interrupted; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert not (run_dir / ".lock").exists()
    finish(fast_config, run_dir)  # simulated latency changes no output: resume without it
    assert signature(run_dir) == reference
