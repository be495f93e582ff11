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

On object storage there is no flock: the miner holds a lease, the object RUN/.lease.json with
an owner id (host, pid, a random token) and an expiry. It is created with an exclusive PUT
(S3 `If-None-Match`, GCS `ifGenerationMatch=0`), so of two drivers starting at once exactly one
gets it; the holder renews it every third of its time to live; a lease past its expiry
belongs to a driver that died and is taken over (at once when that driver ran on this machine
and its process is gone). A holder that finds the lease no longer
names it (it stalled past the expiry and another driver took over) stops before committing
anything more. Expiry times are wall-clock times: the machines need synchronised clocks
(NTP), within a small fraction of the lease time.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

LEASE_KEY = ".lease.json"
LEASE_TTL_S = 60.0  # how long a lease lives without renewal: a dead driver blocks this long

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


def lock_holder(run_dir: Path | str) -> dict[str, Any] | None:
    """The live process mining `run_dir` (host, pid, start), or None."""
    from nhr.storage import is_url

    if is_url(run_dir):
        from nhr.store import RunStore

        return live_lease(RunStore(run_dir).storage)
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
            f"{self.run_dir} is in use by {describe(holder)}; wait for it to finish or "
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


def run_lock(store: Any) -> RunLock | ObjectLease:
    """The lock of a run: a flock on local disk, a lease on object storage."""
    if store.storage.local:
        return RunLock(store.root)
    return ObjectLease(store)


class LeaseLostError(RuntimeError):
    """This driver's lease of an object-storage run was taken over by another driver."""


def live_lease(storage: Any) -> dict[str, Any] | None:
    """The lease of a run on object storage, unless missing, unreadable or expired."""
    lease = _read_lease(storage)
    return lease if _held(lease) else None


def _held(lease: dict[str, Any] | None) -> bool:
    """Whether a lease still holds: not expired, and its driver is not known to be dead (a
    driver on this machine whose process is gone releases it at once)."""
    if lease is None or lease.get("expires", 0) < time.time():
        return False
    return "pid" not in lease or _alive(lease)


def _read_lease(storage: Any) -> dict[str, Any] | None:
    try:
        lease = json.loads(storage.read_bytes(LEASE_KEY).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {"expires": 0}  # damaged: treated as expired, so it is taken over
    return lease if isinstance(lease, dict) else {"expires": 0}


class ObjectLease:
    """One driver per run directory on object storage (module docstring). While held, the
    store checks it before each commit (`store.before_commit`)."""

    def __init__(self, store: Any, ttl_s: float = LEASE_TTL_S) -> None:
        self.store = store
        self.storage = store.storage
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _document(self) -> bytes:
        lease = {**_this_process(), "owner": self.token, "ttl_s": self.ttl_s}
        lease["expires"] = time.time() + self.ttl_s
        return json.dumps(lease).encode("utf-8")

    def __enter__(self) -> ObjectLease:
        self.store.check_is_directory()
        if not self.storage.create_exclusive(LEASE_KEY, self._document()):
            holder = _read_lease(self.storage)
            if _held(holder):
                raise RunLockedError(self._message(holder))
            # Expired or its driver died (or gone meanwhile): take it over. Of two drivers doing
            # this at once, the one whose exclusive create fails refuses; if one deleted the
            # other's fresh lease, the renewal finds out and that driver stops committing.
            self.storage.delete(LEASE_KEY)
            if not self.storage.create_exclusive(LEASE_KEY, self._document()):
                raise RunLockedError(self._message(_read_lease(self.storage)))
        self.store.before_commit = self.check
        self._thread = threading.Thread(target=self._renew_loop, name="nhr-lease", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception as error:  # storage hiccup: try again at the next beat
                log.warning("could not renew the lease of %s: %s", self.store.root, error)
            if self.lost:
                return

    def renew(self) -> None:
        holder = _read_lease(self.storage)
        if holder is None or holder.get("owner") != self.token:
            self.lost = True
            return
        self.storage.write_bytes(LEASE_KEY, self._document())

    def check(self) -> None:
        if self.lost:
            raise LeaseLostError(
                f"{self.store.root}: another driver took over this run's lease (this one "
                "stalled longer than the lease lives); this driver stops, the other goes on"
            )

    def _message(self, holder: dict[str, Any] | None) -> str:
        expires = ""
        if holder and holder.get("expires"):
            expires = f"; its lease expires in {max(0, holder['expires'] - time.time()):.0f} s"
        return (
            f"{self.store.root} is in use by {describe(holder)}{expires} unless renewed. "
            "Wait for it to finish or stop it; a driver that died releases the run when its "
            f"lease expires (at most {self.ttl_s:.0f} s)"
        )

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.store.before_commit = None
        if not self.lost:
            holder = _read_lease(self.storage)
            if holder is not None and holder.get("owner") == self.token:
                self.storage.delete(LEASE_KEY)
