"""Readers shared by the tests: stage tables and the exported dataset of a run directory."""

import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

# Headless Chromium without the background services that would reach the network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def table_rows(run_dir, stage):
    files = sorted((run_dir / "stages" / stage).glob("shard-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def dataset_rows(run_dir):
    files = sorted((run_dir / "dataset" / "data").glob("train-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def signature(run_dir):
    """What must be identical between two runs: ids, image bytes and instructions, in order."""
    return [
        (
            r["sample_id"],
            r["source_image"]["bytes"],
            r["edited_image"]["bytes"],
            r["edit_instruction"],
        )
        for r in dataset_rows(run_dir)
    ]


KILL_HARNESS = Path(__file__).with_name("kill_harness.py")


def mine_command(config, run_dir) -> list[str]:
    """`nhr mine CONFIG --run-dir RUN`, as a user types it, in this interpreter."""
    return [
        sys.executable,
        "-m",
        "nhr.cli",
        "mine",
        str(config),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]


def kill_at_write(config, run_dir, pattern: str, occurrence: int) -> None:
    """Mine and SIGKILL the process on the occurrence-th write whose path holds `pattern`."""
    killed = subprocess.run(
        [sys.executable, str(KILL_HARNESS), str(config), str(run_dir), pattern, str(occurrence)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr


def finish(config, run_dir) -> None:
    """Re-run the same command until it completes, as a user would."""
    for _ in range(5):
        done = subprocess.run(
            mine_command(config, run_dir), capture_output=True, text=True, timeout=300
        )
        if done.returncode == 0:
            return
    raise AssertionError(done.stderr)
