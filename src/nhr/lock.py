"""One miner per run directory.

The miner holds an exclusive `flock` on RUN/.lock for its whole life. Taking it is atomic, so
of two `nhr mine` started at the same instant exactly one mines; the kernel releases it when
the process ends in any way (SIGKILL, a crash), so a killed run never blocks its resume.

The file names the holder: host, pid and the process start time (from /proc/<pid>/stat), so
messages and `nhr status` can say who mines, and a lock file whose pid now belongs to another
process (pids are reused) is recognised as stale.

Limits: flock works on local disks and on NFS (Linux emulates it with NFS byte-range locks).
Some network or FUSE file systems (object-storage mounts) lack locking or lock only on one
machine; there nhr falls back to the holder named in the file, which is not atomic: mine a
run directory from one machine at a time there. A lock file naming a process on another
machine is always respected (nhr cannot see whether it still runs): once sure that process is
gone, remove RUN/.lock by hand.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    pass


def _process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (None where /proc is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _started_at(ticks: int | None) -> str | None:
    """Wall-clock start time, for people."""
    if ticks is None:
        return None
    try:
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))


def _this_process() -> dict[str, Any]:
    pid = os.getpid()
    start = _process_start(pid)
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "start_ticks": start,
        "started": _started_at(start),
    }


def _parse(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not text:
        return None
    if text.isdigit():  # what earlier versions of nhr wrote: just the pid
        return {"pid": int(text)}
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the process the lock file names still runs (the same process, not a new one
    that got its pid). A holder on another host cannot be checked and counts as alive."""
    if holder.get("host") not in (None, socket.gethostname()):
        return True
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    recorded = holder.get("start_ticks")
    return recorded is None or _process_start(pid) in (None, recorded)


def describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process"
    text = f"process {holder['pid']}"
    if holder.get("host"):
        text += f" on {holder['host']}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    return text


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The live process mining `run_dir` (host, pid, start), or None."""
    try:
        holder = _parse((Path(run_dir) / ".lock").read_text())
    except OSError:
        return None
    return holder if holder is not None and _alive(holder) else None


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        from nhr.store import RunStore, file_mode

        RunStore(self.run_dir).check_is_directory()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = self._take_flock(file_mode())
        holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if holder is not None and holder["pid"] != os.getpid() and _alive(holder):
            # a miner of an older nhr version, or one where flock is not supported
            os.close(fd)
            raise RunLockedError(self._message(holder))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_this_process()).encode("utf-8"), 0)
        self._fd = fd
        return self

    def _take_flock(self, mode: int) -> int:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, mode)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = None
                for _ in range(20):  # the holder writes its name just after taking the lock
                    holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                    if holder is not None:
                        break
                    time.sleep(0.025)
                os.close(fd)
                raise RunLockedError(self._message(holder)) from None
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                log.warning(
                    "%s: file locking is not supported here; only one machine "
                    "may mine this run directory at a time",
                    self.path,
                )
                return fd
            # The holder before us unlinks the file as it finishes: if we locked that old
            # file, the lock is meaningless; lock the one now at the path instead.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _message(self, holder: dict[str, Any] | None) -> str:
        return (
            f"{self.run_dir} is being mined by {describe(holder)}; wait for it to finish or "
            f"stop it. If that process is gone (say, its machine was switched off), check, "
            f"then remove {self.path} by hand and run again"
        )

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)  # releases the flock
        self._fd = None
