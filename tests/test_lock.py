"""The run lock: atomic, names its holder, recognises a stale lock, is cleared by hand."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from nhr.lock import RunLock, RunLockedError, lock_holder

# Takes the lock of RUN at the wall-clock instant START, holds it a moment, exits 0; or
# exits 2 with the lock's message, as `nhr mine` does.
HOLDER = """
import sys, time
from nhr.lock import RunLock, RunLockedError
run_dir, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time() - 0.05))
while time.time() < start:
    pass
try:
    with RunLock(run_dir):
        time.sleep(2.0)  # long enough that the other process of the pair tries meanwhile
except RunLockedError as error:
    print(error)
    sys.exit(2)
"""


def test_two_miners_started_at_the_same_instant_one_wins(tmp_path):
    start = time.time() + 3.0  # every process is up and waiting by then, even on a busy CI
    runs = [tmp_path / f"run{trial}" for trial in range(10)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(run_dir), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for run_dir in runs
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=60), p.stdout.read()) for p in processes]
    for trial in range(10):
        pair = outcomes[2 * trial : 2 * trial + 2]
        assert sorted(code for code, _ in pair) == [0, 2], pair
        loser = next(text for code, text in pair if code == 2)
        winner = next(p for p, (code, _) in zip(processes[2 * trial :], pair) if code == 0)
        assert f"process {winner.pid} on {socket.gethostname()}, started" in loser
        assert not (runs[trial] / ".lock").exists()


def test_the_lock_names_host_pid_and_start_and_says_how_to_clear_it(tmp_path):
    with RunLock(tmp_path):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["start_ticks"] is not None
        assert lock_holder(tmp_path)["pid"] == os.getpid()
        other = subprocess.run(
            [sys.executable, "-c", HOLDER, str(tmp_path), "0"], capture_output=True, text=True
        )
        assert other.returncode == 2
        assert f"process {os.getpid()}" in other.stdout
        assert f"remove {tmp_path / '.lock'} by hand" in other.stdout
    assert not (tmp_path / ".lock").exists()


def test_a_lock_whose_pid_was_reused_is_stale(tmp_path):
    """The file names a live pid, but that process started later than the miner it records:
    it is another process that got the pid, so the lock is taken over."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record = {"host": socket.gethostname(), "pid": other.pid, "start_ticks": 1}
        (tmp_path / ".lock").write_text(json.dumps(record))
        assert lock_holder(tmp_path) is None
        with RunLock(tmp_path):
            assert lock_holder(tmp_path)["pid"] == os.getpid()
        # the same pid with its real start time is a live holder (one not using flock)
        with open(f"/proc/{other.pid}/stat") as stat:
            record["start_ticks"] = int(stat.read().rsplit(")", 1)[1].split()[19])
        (tmp_path / ".lock").write_text(json.dumps(record))
        with pytest.raises(RunLockedError, match=f"process {other.pid}"):
            with RunLock(tmp_path):
                pass
    finally:
        other.kill()
        other.wait()


def test_two_nhr_mine_at_once_on_one_run_dir(tmp_path, small_config):
    config = small_config(run={"prompts": 4})
    for role in config["models"].values():
        role.setdefault("faults", {})["latency_s"] = 0.02  # mining outlasts the start-up
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "nhr.cli",
        "mine",
        str(path),
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    both = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in both]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "nhr: error:" in loser and "is in use by process" in loser
    assert "Traceback" not in loser
