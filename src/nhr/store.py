"""The run directory: stage tables, the image store and completion markers (docs/architecture.md).

    RUN/config.yaml                       resolved config (no secrets)
    RUN/stages/<stage>/shard-00003.parquet  rows of one shard
    RUN/stages/<stage>/shard-00003.done.json  completion marker with the shard's stats, written last
    RUN/stages/<stage>/_SUCCESS.json      marker of a stage that runs over all shards at once
    RUN/images/ab/<sha256>.png            content-addressed images

The run directory may be a local path or a URL on object storage (`s3://`, `gs://`); every
file goes through one `Storage` (nhr/storage.py). A file is always written whole: on local
disk to a temporary name renamed into place, on object storage by one PUT. So a killed process
leaves either the old state or the new one, never half a file. (No fsync: the guarantee is
against a killed process, not a power cut, and fsync per image would dominate the framework's
cost.) A shard whose marker is missing is simply redone; deterministic ids make the redo identical. A marker records its table's row
count and SHA-256 and the SHA-256 of each table its shard read, so `nhr verify` (nhr/verify.py)
finds damage, and a shard whose inputs were redone differently is redone too.

Files are written with the user's umask (0644 under the usual 022), like any other program, so
a colleague or a web server can read a run. A file that is missing, unreadable or damaged
raises `RunDirError`, whose message names the path, what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from nhr.storage import (  # noqa: F401  (file_mode, dir_mode, first_line: used elsewhere)
    LocalStorage,
    Storage,
    atomic_write_bytes,
    dir_mode,
    file_mode,
    first_line,
    open_storage,
)

# What to do about a damaged file of a run: the miner's start-up check redoes what made it.
REDO = "run `nhr mine` with the same config and --run-dir again: it redoes what made this file"


class RunDirError(Exception):
    """A file of the run directory is missing, damaged or cannot be used; the message is one
    line naming the path, what is wrong and what to do."""

    def __init__(self, path: str | Path, problem: str, todo: str = REDO) -> None:
        super().__init__(f"{path}: {problem} — {todo}")
        self.path = path  # a Path on local disk, a URL on object storage
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


class ImageStore:
    """Images stored once, named by the SHA-256 of their bytes.

    `get` checks that the bytes match the name. On local disk the check runs once per file and
    process: a file already verified (same inode, size and mtime) is not hashed again, so the
    many reads of one image within a stage cost one hash (about 1.5 ms for a 1 MP PNG).

    On object storage a request costs far more than a local read, and one source image is
    read once per candidate edit of it and again by later stages: the bytes of recently used
    images are kept in memory (`RECENT_BYTES`, least recently used first out). Content
    addressing makes that safe: an image's bytes never change under its name."""

    VERIFIED_MAX = 65536  # remembered file identities; bounded so memory stays flat
    RECENT_BYTES = 128 * 2**20  # object storage: bytes of recently used images kept

    def __init__(self, root: Path | str | Storage, folder: str = "") -> None:
        self.storage = root if isinstance(root, Storage) else open_storage(root)
        self.folder = folder
        self._verified: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_size = 0
        self._lock = threading.Lock()  # backends may read and store images from threads

    def key(self, digest: str) -> str:
        name = f"{digest[:2]}/{digest}.png"
        return f"{self.folder}/{name}" if self.folder else name

    def where(self, digest: str) -> Path | str:
        """The image's path or URL."""
        return self.storage.where(self.key(digest))

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        key = self.key(digest)
        if not isinstance(self.storage, LocalStorage):
            self.storage.write_bytes(key, data)  # one PUT: cheaper than looking first
            self._keep(digest, data)
            return digest
        path = self.storage.path(key)
        # A file already there is kept only if it holds exactly these bytes: a damaged one
        # (garbage, truncated) is replaced, which is how a redone shard repairs the store.
        if not self._holds(path, data):
            atomic_write_bytes(path, data)
        self._remember(digest, _identity(path.stat()))
        return digest

    def get(self, digest: str) -> bytes:
        with self._lock:
            if digest in self._recent:
                self._recent.move_to_end(digest)
                return self._recent[digest]
        key = self.key(digest)
        identity = None
        try:
            if isinstance(self.storage, LocalStorage):
                with open(self.storage.path(key), "rb") as handle:
                    data = handle.read()
                    identity = _identity(os.fstat(handle.fileno()))
            else:
                data = self.storage.read_bytes(key)
        except FileNotFoundError:
            raise DamagedImageError(self.where(digest), "image missing") from None
        with self._lock:
            known = identity is not None and self._verified.get(digest) == identity
        if not known:
            if hashlib.sha256(data).hexdigest() != digest:
                raise DamagedImageError(
                    self.where(digest), "image damaged (its bytes do not match its name)"
                )
            if identity is not None:
                self._remember(digest, identity)
        if identity is None:
            self._keep(digest, data)
        return data

    def _keep(self, digest: str, data: bytes) -> None:
        with self._lock:
            if digest in self._recent or len(data) > self.RECENT_BYTES:
                return
            self._recent[digest] = data
            self._recent_size += len(data)
            while self._recent_size > self.RECENT_BYTES:
                _, old = self._recent.popitem(last=False)
                self._recent_size -= len(old)

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
    """A run directory on local disk or object storage (a path or a URL; see nhr/storage.py).
    `root` is a Path for a local run and the URL for one on object storage."""

    def __init__(self, root: str | Path) -> None:
        self.storage = open_storage(root)
        self.root = self.storage.root
        self.images = ImageStore(self.storage, "images")
        # Called before each commit (marker); the object-storage lease checks it still holds.
        self.before_commit: Callable[[], None] | None = None
        self._tables_cache: dict[str, tuple[bytes, list[str] | None]] = {}

    def where(self, key: str = "") -> Path | str:
        """The path or URL of a file of the run, for messages."""
        return self.storage.where(key)

    # -- config ---------------------------------------------------------------------------
    CONFIG = "config.yaml"

    def check_is_directory(self) -> None:
        if self.storage.is_file():
            raise RunDirError(
                self.root,
                "is a file, not a run directory",
                "pass a --run-dir that is a directory or does not exist yet",
            )

    def has_config(self) -> bool:
        return self.storage.exists(self.CONFIG)

    def read_config(self) -> dict[str, Any] | None:
        self.check_is_directory()
        try:
            raw = self.storage.read_bytes(self.CONFIG)
        except FileNotFoundError:
            return None
        try:
            data = yaml.safe_load(raw.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            data = error
        if not isinstance(data, dict):
            raise RunDirError(
                self.where(self.CONFIG),
                "damaged (not the YAML mapping nhr wrote)",
                "restore it from a copy, or mine into a new --run-dir",
            )
        return data

    def write_config(self, data: dict[str, Any]) -> None:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        self.storage.write_bytes(self.CONFIG, text.encode("utf-8"))

    # -- any file of the run (reports, stats) ---------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        self.storage.write_bytes(key, data)

    def write_json(self, key: str, data: Any) -> None:
        self.storage.write_bytes(key, json_bytes(data))

    # -- stage tables ---------------------------------------------------------------------
    @staticmethod
    def stage_folder(stage: str) -> str:
        return f"stages/{stage}"

    def shard_key(self, stage: str, shard: int) -> str:
        return f"stages/{stage}/shard-{shard:05d}.parquet"

    def marker_key(self, stage: str, shard: int | None) -> str:
        if shard is None:
            return f"stages/{stage}/_SUCCESS.json"
        return f"stages/{stage}/shard-{shard:05d}.done.json"

    def is_done(self, stage: str, shard: int | None = None) -> bool:
        return self.storage.exists(self.marker_key(stage, shard))

    def read_marker(self, stage: str, shard: int | None = None) -> dict[str, Any] | None:
        raw = self._read_marker_bytes(stage, shard)
        return None if raw is None else self._parse_marker(stage, shard, raw)

    def _read_marker_bytes(self, stage: str, shard: int | None) -> bytes | None:
        try:
            return self.storage.read_bytes(self.marker_key(stage, shard))
        except FileNotFoundError:
            return None

    def _parse_marker(self, stage: str, shard: int | None, raw: bytes) -> dict[str, Any]:
        try:
            marker = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            marker = None
        if not isinstance(marker, dict):
            raise RunDirError(
                self.where(self.marker_key(stage, shard)),
                "damaged completion marker (not the JSON nhr wrote)",
            )
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
        self.storage.write_bytes(self.shard_key(stage, shard), data)
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
        raw = self._read_marker_bytes(stage, None)
        if raw is None:
            return None
        fingerprint = hashlib.sha256(raw).digest()
        cached = self._tables_cache.get(stage)
        if cached is None or cached[0] != fingerprint:
            cached = (fingerprint, self._parse_marker(stage, None, raw).get("tables"))
            self._tables_cache[stage] = cached
        return cached[1]

    def mark_done(self, stage: str, shard: int | None, marker: dict[str, Any]) -> None:
        if self.before_commit is not None:
            self.before_commit()
        self.storage.write_bytes(self.marker_key(stage, shard), json_bytes(marker))

    def remove_marker(self, stage: str, shard: int | None) -> None:
        self.storage.delete(self.marker_key(stage, shard))

    def read_rows(self, stage: str, shard: int) -> list[dict[str, Any]]:
        """The rows of a shard's table. A missing table is an error, never an empty shard:
        callers only read tables whose stage is marked done."""
        return self.read_table(self.shard_key(stage, shard)).to_pylist()

    def read_table(self, key: str) -> pa.Table:
        """A table of the run, or a RunDirError naming it when it is missing or not parquet."""
        try:
            data = self.storage.read_bytes(key)
        except FileNotFoundError:
            raise RunDirError(
                self.where(key), "table missing although its stage is marked done"
            ) from None
        return parse_table(self.where(key), data)

    def done_shards(self, stage: str) -> list[int]:
        names = self.storage.names(self.stage_folder(stage))
        return sorted(
            int(n[6:11]) for n in names if n.startswith("shard-") and n.endswith(".done.json")
        )

    def has_any_output(self, stage: str) -> bool:
        return any(n.endswith(".json") for n in self.storage.names(self.stage_folder(stage)))

    def clear_stage(self, stage: str) -> None:
        self.storage.delete_folder(self.stage_folder(stage))

    # -- checkpoints inside a stage (e.g. one per design batch) ---------------------------
    def checkpoint_key(self, stage: str, key: str) -> str:
        return f"stages/{stage}/parts/{key}.json"

    def load_checkpoint(self, stage: str, key: str) -> Any | None:
        """A checkpoint, or None when there is none or it is damaged: it only saves work, so
        a damaged one is simply made again."""
        name = self.checkpoint_key(stage, key)
        try:
            return json.loads(self.storage.read_bytes(name).decode("utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            self.storage.delete(name)
            return None

    def save_checkpoint(self, stage: str, key: str, value: Any) -> None:
        self.storage.write_bytes(self.checkpoint_key(stage, key), json_bytes(value))


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode("utf-8")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json_bytes(data))


def read_table(path: Path) -> pa.Table:
    """A local parquet file, or a RunDirError naming it when it is missing or not parquet."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RunDirError(path, "table missing although its stage is marked done") from None
    return parse_table(path, data)


def table_from_bytes(data: bytes) -> pa.Table:
    """A parquet table read from bytes in memory, in the calling thread.

    Not `pq.read_table`: its dataset scanner can drop the last reference to the Python bytes
    on one of Arrow's worker threads after the call returns; when that happens while the
    interpreter exits, the thread cannot take the GIL and the process aborts ("terminate called
    without an active exception", exit -6) after its work is done."""
    return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)


def parse_table(where: Path | str, data: bytes) -> pa.Table:
    try:
        return table_from_bytes(data)
    except pa.ArrowException as error:  # a permission or disk problem is an OSError, kept
        raise RunDirError(where, f"damaged table ({first_line(error)})") from None
