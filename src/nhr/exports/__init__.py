"""`nhr export RUN --format F`: the released triplets in the layouts editor trainers read
(docs/exports.md). One module per format family; `FORMATS` maps each name to its writer.

Every format reads the run through `RunStore` (local or object storage) and writes through an
output `Storage` (a local folder or a URL), streams a row group or a shard at a time, and gives
the same bytes for the same run and options.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhr.exports.common import (
    MANIFEST,
    ExportError,
    ExportJob,
    default_output,
    finished_shards,
    output_folder,
    select_mini,
    triplet_rows,
)
from nhr.exports.lora import write_lora_folders
from nhr.exports.parquet import push_to_hub, write_hf, write_ip2p
from nhr.exports.preference import preference_rows, write_preference
from nhr.exports.webdataset import write_webdataset
from nhr.storage import FolderWriter

__all__ = ["FORMATS", "ExportError", "export_run"]


@dataclass(frozen=True)
class Format:
    write: Callable[[ExportJob, FolderWriter], dict[str, Any]]
    rows: Callable[[ExportJob], Iterator[dict[str, Any]]]  # what --mini picks from
    id_key: str
    mini_groups: tuple[str, ...]  # --mini spreads the subset over these columns


def _kontext(job: ExportJob, folder: FolderWriter) -> dict[str, Any]:
    return write_lora_folders(job, folder, "kontext-lora")


def _qwen_edit(job: ExportJob, folder: FolderWriter) -> dict[str, Any]:
    return write_lora_folders(job, folder, "qwen-edit-lora")


_TRIPLETS = {"rows": triplet_rows, "id_key": "sample_id", "mini_groups": ("kind", "category")}

FORMATS: dict[str, Format] = {
    "hf": Format(write_hf, **_TRIPLETS),
    "webdataset": Format(write_webdataset, **_TRIPLETS),
    "ip2p": Format(write_ip2p, **_TRIPLETS),
    "kontext-lora": Format(_kontext, **_TRIPLETS),
    "qwen-edit-lora": Format(_qwen_edit, **_TRIPLETS),
    "preference": Format(write_preference, preference_rows, "pair_id", ("category",)),
}


def export_run(
    run: str | Path,
    fmt: str,
    output: str | Path | None = None,
    split_test: float = 0.02,
    mini: int | None = None,
    seed: int = 0,
    hub_repo: str | None = None,
    private: bool = False,
) -> dict[str, Any]:
    """Export a finished run in format `fmt` to `output` (default RUN/exports/<fmt>); returns
    the summary also written to OUT/nhr-export.json, plus `output`. With `hub_repo` the
    export is then uploaded to that Hub dataset repository (`private`: as a private one)."""
    from nhr.config import parse_config
    from nhr.lock import run_lock
    from nhr.pipeline import release_stage
    from nhr.store import RunStore

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if not 0 <= split_test < 1:
        raise ExportError(f"--split-test must be in [0, 1), not {split_test}")
    if mini is not None and mini < 1:
        raise ExportError("--mini must be at least 1")
    if hub_repo is not None and fmt != "hf":
        raise ExportError("--push-to-hub works with --format hf only")
    store = RunStore(run)
    raw = store.read_config()
    if raw is None:
        raise ExportError(f"{store.root}: not a run directory (no config.yaml)")
    config = parse_config(raw)
    release = release_stage(config)
    shards = finished_shards(store, release)
    if not shards:
        raise ExportError(f"the run has not finished '{release}' yet; finish it with `nhr mine`")
    job = ExportJob(
        store=store,
        release=release,
        shards=shards,
        rows_per_file=config.export.rows_per_file,
        split_test=split_test,
        seed=seed,
        mini=mini,
    )
    spec = FORMATS[fmt]
    target = output if output is not None else default_output(store, fmt)
    with run_lock(store):  # no `--redo-from` may change the tables while they are read
        if mini is not None:
            job.keep = select_mini(
                lambda: spec.rows(job), mini, spec.id_key, spec.mini_groups, seed
            )
        with output_folder(target, store.root) as folder:
            # on object storage files appear one by one: a manifest first marks the folder as
            # an nhr export, so an export killed half-way can be redone into it
            folder.write_bytes(MANIFEST, json.dumps({"format": fmt, "complete": False}).encode())
            summary = {
                "format": fmt,
                "split_test": split_test,
                "seed": seed,
                "mini": mini,
                **spec.write(job, folder),
            }
            folder.write_bytes(MANIFEST, json.dumps(summary, indent=2, sort_keys=True).encode())
    if hub_repo is not None:
        push_to_hub(str(target), hub_repo, summary["rows"], private=private)
    return {**summary, "output": str(target)}
