"""WebDataset tar shards: one tar per `rows_per_file` samples and split.

    OUT/train-000000.tar   <key>.source.png  <key>.edited.png  <key>.txt  <key>.json  ...
    OUT/test-000000.tar
    OUT/README.md          the shard URLs in brace notation and how to read them

WebDataset groups consecutive tar members into a sample by the member name up to its first
dot (the key, here the 16-hex-digit triplet id, which has no dot) and names each file of the
sample by the rest (the extension: `source.png`, `edited.png`, `txt`, `json`); its image
decoder picks members by their last extension (`png`). Members of a sample are written
together, with fixed owner, mode and time, so the same run gives the same bytes.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from typing import Any

from nhr.exports.common import SPLITS, ExportJob, image_bytes, triplet_rows
from nhr.storage import FolderWriter

IMAGE_COLUMNS = ("source_image", "edited_image")


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def sample_files(job: ExportJob, row: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(extension, bytes) of one sample, in the order they go into the tar."""
    metadata = {key: value for key, value in row.items() if key not in IMAGE_COLUMNS}
    metadata.update(source_digest=row["source_image"], edited_digest=row["edited_image"])
    return [
        ("source.png", image_bytes(job.store, row["source_image"])),
        ("edited.png", image_bytes(job.store, row["edited_image"])),
        ("txt", row["edit_instruction"].encode("utf-8")),
        ("json", json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode("utf-8")),
    ]


def write_webdataset(job: ExportJob, folder: FolderWriter) -> dict[str, Any]:
    counts = dict.fromkeys(SPLITS, 0)
    shards: dict[str, int] = dict.fromkeys(SPLITS, 0)
    for split in SPLITS:
        selected = (row for row in triplet_rows(job) if row["split"] == split)
        while chunk := list(itertools.islice(selected, job.rows_per_file)):
            # `chunk` holds rows without images; the images are read one sample at a time
            name = f"{split}-{shards[split]:06d}.tar"
            with (
                folder.open_write(name) as handle,
                tarfile.open(fileobj=handle, mode="w|", format=tarfile.USTAR_FORMAT) as tar,
            ):
                for row in chunk:
                    for extension, data in sample_files(job, row):
                        _member(tar, f"{row['sample_id']}.{extension}", data)
            shards[split] += 1
            counts[split] += len(chunk)
    urls = {
        split: f"{split}-{{000000..{shards[split] - 1:06d}}}.tar"
        for split in SPLITS
        if shards[split]
    }
    lines = [
        "# Image-editing triplets as WebDataset shards",
        "",
        "Each sample: `<key>.source.png` (source image), `<key>.edited.png` (edited image), "
        "`<key>.txt` (the instruction) and `<key>.json` (the row's metadata: category, kind, "
        "scores, ids). The key is the triplet id. Splits are by source image.",
        "",
        "| split | samples | shards |",
        "|---|---:|---|",
    ]
    lines += [f"| {split} | {counts[split]:,} | `{urls[split]}` |" for split in urls]
    lines += [
        "",
        "```python",
        "import webdataset as wds",
        f'ds = wds.WebDataset("path/to/this/folder/{urls.get("train", "train-000000.tar")}", '
        'shardshuffle=False).decode("pil").to_tuple("source.png", "txt", "edited.png")',
        "```",
    ]
    folder.write_bytes("README.md", ("\n".join(lines) + "\n").encode("utf-8"))
    return {"rows": counts, "shards": urls}
