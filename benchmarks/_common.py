"""Shared helpers for the benchmarks: load the quickstart config and read stage tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> dict:
    return yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())


def stage_rows(run_dir: Path, stage: str) -> list[dict]:
    files = sorted((run_dir / "stages" / stage).glob("shard-*.parquet"))
    return [row for path in files for row in pq.read_table(path).to_pylist()]
