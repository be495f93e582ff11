"""The triplets an editor LoRA trains on: a finished run's released set (read through
`RunStore`, local or object storage) or an `hf` export folder (`nhr export RUN --format hf`).

The split is the exports' one (nhr/exports/common.py): a seeded hash of the source image, so
the held-out `test` triplets never share a source with the training ones, and the fixed
validation triplets are taken from `test` when it has any. Only image digests (run) or row
positions (export) are held in memory; an image is read when a step needs it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from nhr.train.errors import TrainError

SPLIT_TEST = 0.02  # the share `nhr export` holds out by default
SPLIT_SEED = 0


@dataclass(frozen=True)
class Triplet:
    sample_id: str
    instruction: str
    source: Image.Image
    edited: Image.Image


class TripletData:
    """Training and validation triplets, read on demand by position."""

    def __init__(self, train: list[Any], test: list[Any], read: Any) -> None:
        self.train = train  # opaque handles, passed to `read`
        self.test = test
        self._read = read

    def __len__(self) -> int:
        return len(self.train)

    def triplet(self, handle: Any) -> Triplet:
        return self._read(handle)

    def validation(self, count: int) -> list[Any]:
        """The first `count` held-out triplets (training ones if none is held out)."""
        return (self.test or self.train)[:count]


def load_triplets(location: str | Path) -> TripletData:
    """The triplets of a run directory (local path or URL) or of an `hf` export folder."""
    from nhr.storage import open_storage

    storage = open_storage(str(location))
    if storage.exists("nhr-export.json"):
        return _from_hf_export(storage, location)
    if storage.exists("config.yaml"):
        return _from_run(location)
    raise TrainError(
        f"{location}: neither a run directory (config.yaml) nor an `nhr export --format hf` "
        "folder (nhr-export.json)"
    )


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _from_run(location: str | Path) -> TripletData:
    from nhr.config import parse_config
    from nhr.exports.common import ExportJob, finished_shards, image_bytes, triplet_rows
    from nhr.pipeline import release_stage
    from nhr.store import RunStore

    store = RunStore(location)
    config = parse_config(store.read_config())
    release = release_stage(config)
    shards = finished_shards(store, release)
    if not shards:
        raise TrainError(f"{location}: the run has not finished '{release}'; finish it first")
    job = ExportJob(
        store=store,
        release=release,
        shards=shards,
        rows_per_file=config.export.rows_per_file,
        split_test=SPLIT_TEST,
        seed=SPLIT_SEED,
    )
    splits: dict[str, list[tuple[str, str, str, str]]] = {"train": [], "test": []}
    for row in triplet_rows(job):
        splits[row["split"]].append(
            (row["sample_id"], row["edit_instruction"], row["source_image"], row["edited_image"])
        )

    def read(handle: tuple[str, str, str, str]) -> Triplet:
        sample_id, instruction, source, edited = handle
        return Triplet(
            sample_id,
            instruction,
            _decode(image_bytes(store, source)),
            _decode(image_bytes(store, edited)),
        )

    return _checked(TripletData(splits["train"], splits["test"], read), location)


def _from_hf_export(storage: Any, location: str | Path) -> TripletData:
    import pyarrow.parquet as pq

    manifest = json.loads(storage.read_bytes("nhr-export.json"))
    if manifest.get("format") != "hf":
        raise TrainError(
            f"{location} is a `{manifest.get('format')}` export; train reads a run directory or "
            "an `hf` export"
        )
    files = sorted(name for name in storage.names("data") if name.endswith(".parquet"))
    splits: dict[str, list[tuple[str, int, int]]] = {"train": [], "test": []}
    for name in files:
        split = Path(name).name.split("-", 1)[0]
        with storage.open_read(f"data/{Path(name).name}") as handle:
            metadata = pq.ParquetFile(handle).metadata
        for group in range(metadata.num_row_groups):
            for row in range(metadata.row_group(group).num_rows):
                splits.setdefault(split, []).append((Path(name).name, group, row))
    columns = ["sample_id", "edit_instruction", "source_image", "edited_image"]
    cache: dict[tuple[str, int], Any] = {}  # the last row group read: steps read in runs

    def read(handle: tuple[str, int, int]) -> Triplet:
        name, group, row = handle
        if (name, group) not in cache:
            cache.clear()
            with storage.open_read(f"data/{name}") as opened:
                cache[name, group] = pq.ParquetFile(opened).read_row_group(
                    group, columns=columns, use_threads=False
                )
        record = cache[name, group].slice(row, 1).to_pylist()[0]
        return Triplet(
            record["sample_id"],
            record["edit_instruction"],
            _decode(record["source_image"]["bytes"]),
            _decode(record["edited_image"]["bytes"]),
        )

    return _checked(TripletData(splits["train"], splits.get("test", []), read), location)


def _checked(data: TripletData, location: str | Path) -> TripletData:
    if not data.train:
        raise TrainError(f"{location}: no training triplets")
    return data


def paired_square(source: Image.Image, edited: Image.Image, size: int) -> tuple[Any, Any]:
    """Both images center-cropped to the source's largest centered square and resized to
    `size` x `size`, the same crop for both (a pixel of the source stays aligned with the
    pixel it became), as float tensors in [-1, 1], C x H x W."""
    import numpy as np
    import torch

    width, height = source.size
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2)
    box = (*box, box[0] + side, box[1] + side)

    def tensor(image: Image.Image) -> Any:
        if image.size != source.size:  # an editor that changed the size: align by resizing
            image = image.resize(source.size, Image.Resampling.LANCZOS)
        image = image.crop(box).resize((size, size), Image.Resampling.LANCZOS)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)

    return tensor(source), tensor(edited)
