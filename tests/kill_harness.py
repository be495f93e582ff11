"""Run `nhr mine` and SIGKILL it at a chosen write: used by test_kill_resume.py.

    python kill_harness.py CONFIG RUN_DIR PATTERN OCCURRENCE

The process kills itself on the OCCURRENCE-th write whose path contains PATTERN, after half
of the bytes reached the temporary file: exactly a crash in the middle of writing a file.
PATTERN "export-row" kills while the dataset is being written instead.
"""

import os
import signal
import sys

import nhr.stages.export as export
import nhr.storage as storage
import nhr.store as store
from nhr.cli import main

config, run_dir, pattern, occurrence = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = 0
original_write = store.atomic_write_bytes
original_row = export._with_image_bytes


def die_on_match(hit: bool) -> None:
    global seen
    if hit:
        seen += 1
        if seen == occurrence:
            os.kill(os.getpid(), signal.SIGKILL)


def write(path, data):
    if pattern in str(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / f".{path.name}.partial.tmp").write_bytes(data[: len(data) // 2])
        die_on_match(True)
    return original_write(path, data)


def row(store_, row_):
    die_on_match(pattern == "export-row")
    return original_row(store_, row_)


store.atomic_write_bytes = write  # images
storage.atomic_write_bytes = write  # every other file of a local run directory
export._with_image_bytes = row
sys.exit(main(["mine", config, "--run-dir", run_dir, "--no-progress"]))
