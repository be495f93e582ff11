"""One miner per run directory. The lock file holds the miner's pid; a lock left by a killed
process (its pid is gone) is taken over, so SIGKILL never blocks a resume."""

from __future__ import annotations

import os
from pathlib import Path


class RunLockedError(RuntimeError):
    pass


def lock_owner(run_dir: Path) -> int | None:
    """The pid of the live process mining `run_dir`, if any."""
    path = run_dir / ".lock"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"

    def __enter__(self) -> RunLock:
        owner = lock_owner(self.path.parent)
        if owner is not None and owner != os.getpid():
            raise RunLockedError(
                f"{self.path.parent} is being mined by process {owner}; wait for it or stop it"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
