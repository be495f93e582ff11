"""The run directory: stage tables, the image store and completion markers (DESIGN.md §4).

    RUN/config.yaml                       resolved config (no secrets)
    RUN/stages/<stage>/shard-00003.parquet  rows of one shard
    RUN/stages/<stage>/shard-00003.done.json  completion marker with the shard's stats, written last
    RUN/stages/<stage>/_SUCCESS.json      marker of a stage that runs over all shards at once
    RUN/images/ab/<sha256>.png            content-addressed images

Every file is written to a temporary name and renamed into place, so a killed process leaves
either the old state or the new one, never half a file. (No fsync: the guarantee is against a
killed process, not a power cut, and fsync per image would dominate the framework's cost.) A shard whose marker is missing is
simply redone; deterministic ids make the redo identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))


class ImageStore:
    """Images stored once, named by the SHA-256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.png"

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        if not path.exists():
            atomic_write_bytes(path, data)
        return digest

    def get(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()


class RunStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.images = ImageStore(self.root / "images")

    # -- config ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def read_config(self) -> dict[str, Any] | None:
        if not self.config_path.exists():
            return None
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8"))

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
        return json.loads(path.read_text(encoding="utf-8"))

    def write_rows(
        self, stage: str, shard: int, rows: list[dict[str, Any]], schema: pa.Schema
    ) -> None:
        table = pa.Table.from_pylist(rows, schema=schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        atomic_write_bytes(self.shard_path(stage, shard), sink.getvalue().to_pybytes())

    def mark_done(self, stage: str, shard: int | None, marker: dict[str, Any]) -> None:
        atomic_write_json(self.marker_path(stage, shard), marker)

    def read_rows(self, stage: str, shard: int) -> list[dict[str, Any]]:
        path = self.shard_path(stage, shard)
        if not path.exists():
            return []
        return pq.read_table(path).to_pylist()

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
        path = self.checkpoint_path(stage, key)
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def save_checkpoint(self, stage: str, key: str, value: Any) -> None:
        atomic_write_json(self.checkpoint_path(stage, key), value)
