"""The run directory: stage tables, the image store and completion markers (DESIGN.md §4).

    RUN/config.yaml                       resolved config (no secrets)
    RUN/stages/<stage>/shard-00003.parquet  rows of one shard
    RUN/stages/<stage>/shard-00003.done.json  completion marker with the shard's stats, written last
    RUN/stages/<stage>/_SUCCESS.json      marker of a stage that runs over all shards at once
    RUN/images/ab/<sha256>.png            content-addressed images

Every file is written to a temporary name and renamed into place, so a killed process leaves
either the old state or the new one, never half a file. (No fsync: the guarantee is against a
killed process, not a power cut, and fsync per image would dominate the framework's cost.) A shard whose marker is missing is
simply redone; deterministic ids make the redo identical. A marker records its table's row
count and SHA-256 and the SHA-256 of each table its shard read, so `nhr verify` (nhr/verify.py)
finds damage, and a shard whose inputs were redone differently is redone too.

Files are written with the user's umask (0644 under the usual 022), like any other program, so
a colleague or a web server can read a run. A file that is missing, unreadable or damaged
raises `RunDirError`, whose message names the path, what is wrong and what to do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

# What to do about a damaged file of a run: the miner's start-up check redoes what made it.
REDO = "run `nhr mine` with the same config and --run-dir again: it redoes what made this file"


class RunDirError(Exception):
    """A file of the run directory is missing, damaged or cannot be used; the message is one
    line naming the path, what is wrong and what to do."""

    def __init__(self, path: str | Path, problem: str, todo: str = REDO) -> None:
        super().__init__(f"{path}: {problem} — {todo}")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self):  # picklable, so a worker process can raise it to the driver
        return (restore_error, (type(self), str(self), self.__dict__))


def restore_error(cls: type[BaseException], message: str, state: dict[str, Any]):
    """Unpickle an error whose __init__ takes other arguments than its message."""
    error = cls.__new__(cls)
    error.args = (message,)
    error.__dict__.update(state)
    return error


class DamagedImageError(RunDirError):
    """An image of the store is missing or its bytes do not match its name (its SHA-256).

    Deliberately not an OSError or ValueError: code that turns unreadable model output into
    a failed row must not swallow damage to the run directory."""


@functools.cache
def process_umask() -> int:
    """The process umask, read once. Linux shows it in /proc without changing it; elsewhere
    the set-and-restore dance runs once (the first write, before any worker thread writes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~process_umask()


def dir_mode() -> int:
    return 0o777 & ~process_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 whatever the umask; give the file the mode open() would have
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(path)  # a failed write() names no file; messages need one
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))


class ImageStore:
    """Images stored once, named by the SHA-256 of their bytes.

    `get` checks that the bytes match the name. The check runs once per file and process: a
    file already verified (same inode, size and mtime) is not hashed again, so the many reads
    of one image within a stage cost one hash (about 1.5 ms for a 1 MP PNG)."""

    VERIFIED_MAX = 65536  # remembered file identities; bounded so memory stays flat

    def __init__(self, root: Path) -> None:
        self.root = root
        self._verified: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._lock = threading.Lock()  # backends may read and store images from threads

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.png"

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        # A file already there is kept only if it holds exactly these bytes: a damaged one
        # (garbage, truncated) is replaced, which is how a redone shard repairs the store.
        if not self._holds(path, data):
            atomic_write_bytes(path, data)
        self._remember(digest, _identity(path.stat()))
        return digest

    def get(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
                identity = _identity(os.fstat(handle.fileno()))
        except FileNotFoundError:
            raise DamagedImageError(path, "image missing") from None
        with self._lock:
            known = self._verified.get(digest) == identity
        if not known:
            if hashlib.sha256(data).hexdigest() != digest:
                raise DamagedImageError(path, "image damaged (its bytes do not match its name)")
            self._remember(digest, identity)
        return data

    @staticmethod
    def _holds(path: Path, data: bytes) -> bool:
        try:
            if path.stat().st_size != len(data):  # cheap first: most damage changes the size
                return False
            return path.read_bytes() == data
        except FileNotFoundError:
            return False

    def _remember(self, digest: str, identity: tuple[int, int, int]) -> None:
        with self._lock:
            self._verified[digest] = identity
            self._verified.move_to_end(digest)
            if len(self._verified) > self.VERIFIED_MAX:
                self._verified.popitem(last=False)


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class RunStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.images = ImageStore(self.root / "images")
        self._tables_cache: dict[str, tuple[tuple[int, int, int], list[str] | None]] = {}

    # -- config ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def check_is_directory(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(
                self.root,
                "is a file, not a run directory",
                "pass a --run-dir that is a directory or does not exist yet",
            )

    def read_config(self) -> dict[str, Any] | None:
        self.check_is_directory()
        if not self.config_path.exists():
            return None
        try:
            data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            data = error
        if not isinstance(data, dict):
            raise RunDirError(
                self.config_path,
                "damaged (not the YAML mapping nhr wrote)",
                "restore it from a copy, or mine into a new --run-dir",
            )
        return data

    def write_config(self, data: dict[str, Any]) -> None:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        atomic_write_bytes(self.config_path, text.encode("utf-8"))

    # -- stage tables ---------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def shard_path(self, stage: str, shard: int) -> Path:
        return self.stage_dir(stage) / f"shard-{shard:05d}.parquet"

    def marker_path(self, stage: str, shard: int | None) -> Path:
        if shard is None:
            return self.stage_dir(stage) / "_SUCCESS.json"
        return self.stage_dir(stage) / f"shard-{shard:05d}.done.json"

    def is_done(self, stage: str, shard: int | None = None) -> bool:
        return self.marker_path(stage, shard).exists()

    def read_marker(self, stage: str, shard: int | None = None) -> dict[str, Any] | None:
        path = self.marker_path(stage, shard)
        if not path.exists():
            return None
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            marker = None
        if not isinstance(marker, dict):
            raise RunDirError(path, "damaged completion marker (not the JSON nhr wrote)")
        return marker

    def write_rows(
        self, stage: str, shard: int, rows: list[dict[str, Any]], schema: pa.Schema
    ) -> str:
        """Write a shard's table; returns the SHA-256 of the file, which its completion marker
        records (`table_sha256`) so damage is detected and later stages know what they read."""
        table = pa.Table.from_pylist(rows, schema=schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        atomic_write_bytes(self.shard_path(stage, shard), data)
        return hashlib.sha256(data).hexdigest()

    def table_digest(self, stage: str, shard: int) -> str | None:
        """The SHA-256 of a finished shard's table, as its marker recorded it (None for markers
        written before nhr recorded it). Global stages list one digest per shard."""
        marker = self.read_marker(stage, shard)
        if marker is not None:
            return marker.get("table_sha256")
        tables = self._global_tables(stage)
        return tables[shard] if tables and shard < len(tables) else None

    def _global_tables(self, stage: str) -> list[str] | None:
        """The digests a global marker lists, parsed once per version of the file (every
        shard of every later stage asks, and the list grows with the run)."""
        path = self.marker_path(stage, None)
        try:
            identity = _identity(path.stat())
        except FileNotFoundError:
            return None
        cached = self._tables_cache.get(stage)
        if cached is None or cached[0] != identity:
            cached = (identity, (self.read_marker(stage) or {}).get("tables"))
            self._tables_cache[stage] = cached
        return cached[1]

    def mark_done(self, stage: str, shard: int | None, marker: dict[str, Any]) -> None:
        atomic_write_json(self.marker_path(stage, shard), marker)

    def read_rows(self, stage: str, shard: int) -> list[dict[str, Any]]:
        """The rows of a shard's table. A missing table is an error, never an empty shard:
        callers only read tables whose stage is marked done."""
        return read_table(self.shard_path(stage, shard)).to_pylist()

    def done_shards(self, stage: str) -> list[int]:
        directory = self.stage_dir(stage)
        if not directory.exists():
            return []
        return sorted(int(p.name[6:11]) for p in directory.glob("shard-*.done.json"))

    def has_any_output(self, stage: str) -> bool:
        directory = self.stage_dir(stage)
        return directory.exists() and any(directory.glob("*.json"))

    def clear_stage(self, stage: str) -> None:
        shutil.rmtree(self.stage_dir(stage), ignore_errors=True)

    # -- checkpoints inside a stage (e.g. one per design batch) ---------------------------
    def checkpoint_path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / "parts" / f"{key}.json"

    def load_checkpoint(self, stage: str, key: str) -> Any | None:
        """A checkpoint, or None when there is none or it is damaged: it only saves work, so
        a damaged one is simply made again."""
        path = self.checkpoint_path(stage, key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            path.unlink(missing_ok=True)
            return None

    def save_checkpoint(self, stage: str, key: str, value: Any) -> None:
        atomic_write_json(self.checkpoint_path(stage, key), value)


def read_table(path: Path) -> pa.Table:
    """A stage table, or a RunDirError naming it when it is missing or not readable parquet."""
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise RunDirError(path, "table missing although its stage is marked done") from None
    except pa.ArrowException as error:  # a permission or disk problem is an OSError, kept
        raise RunDirError(path, f"damaged table ({first_line(error)})") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
