"""What every export format shares: the rows to export, the train/test split, the `--mini`
subset, the output folder and the images.

Rows are read shard by shard through `RunStore` (a local run or one on object storage) and
carry image digests only; a writer fetches an image's bytes when it writes that row, so memory
holds one row group at a time however large the run.

The split never leaks: a row's split is a seeded hash of its `source_id`, and an inverse or a
composite keeps the `source_id` of the generated image it was made from (nhr/stages/invert.py,
compose.py), so a source image, its forward edits, their inverses and its composites all land
in one split.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhr.ids import unit_interval
from nhr.storage import FolderWriter, LocalStorage, Storage, is_url, open_storage
from nhr.store import RunStore

TRAIN, TEST = "train", "test"
SPLITS = (TRAIN, TEST)


class ExportError(ValueError):
    """The export cannot be made as asked (unknown format, unfinished run, bad option)."""


@dataclass
class ExportJob:
    """What one `nhr export RUN --format F` works on."""

    store: RunStore
    release: str  # the stage whose triplet table is the released set
    shards: list[int]
    rows_per_file: int
    split_test: float = 0.02
    seed: int = 0
    mini: int | None = None
    # filled by `select_mini`: the ids (sample or pair ids) the --mini subset keeps
    keep: set[str] | None = field(default=None, repr=False)


def split_of(source_id: str, split_test: float, seed: int) -> str:
    """`test` for a share `split_test` of the source images, chosen by a seeded hash."""
    return TEST if unit_interval(seed, "split", source_id) < split_test else TRAIN


def finished_shards(store: RunStore, release: str) -> list[int]:
    """The run's shards when every one has finished `release` (the released set is complete);
    an empty list while one has not or the run has no shards yet."""
    from nhr.run import shard_count

    shards = range(shard_count(store))
    return list(shards) if shards and all(store.is_done(release, s) for s in shards) else []


def triplet_rows(job: ExportJob) -> Iterator[dict[str, Any]]:
    """The released triplets as the rows of the `hf` dataset (image digests, not bytes), with
    `source_id` and `split` added; ordered by shard, then triplet id; `--mini` applied."""
    from nhr.stages.export import shard_rows

    for shard in job.shards:
        source_of = {
            t["triplet_id"]: t["source_id"] for t in job.store.read_rows(job.release, shard)
        }
        for row in shard_rows(job.store, shard, job.release):
            if job.keep is not None and row["sample_id"] not in job.keep:
                continue
            row["source_id"] = source_of[row["sample_id"]]
            row["split"] = split_of(row["source_id"], job.split_test, job.seed)
            yield row


def select_mini(
    rows: Callable[[], Iterator[dict[str, Any]]],
    count: int,
    id_key: str,
    group_keys: tuple[str, ...],
    seed: int,
) -> set[str]:
    """The ids of a balanced subset of `count` rows: groups (by `group_keys`, e.g. kind and
    category) take turns giving their next row, in a seeded order, until `count` are taken,
    so every group is represented and none dominates. Memory: `count` rows per group."""
    best: dict[tuple[Any, ...], list[tuple[float, str]]] = {}
    for row in rows():
        heap = best.setdefault(tuple(row[key] for key in group_keys), [])
        # a max-heap (negated rank) of the group's `count` lowest-ranked rows
        item = (-unit_interval(seed, "mini", row[id_key]), row[id_key])
        if len(heap) < count:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    queues = [sorted(best[group], reverse=True) for group in sorted(best)]
    kept: set[str] = set()
    while len(kept) < count and any(queues):
        for queue in queues:
            if queue and len(kept) < count:
                kept.add(queue.pop(0)[1])
    return kept


def image_bytes(store: RunStore, digest: str) -> bytes:
    """An image's bytes, checked as the dataset export checks them (nhr/stages/export.py)."""
    from nhr.stages.export import checked_image

    return checked_image(store, digest)


def image_cell(store: RunStore, digest: str) -> dict[str, Any]:
    """An image as a `datasets.Image` cell: {bytes, path}."""
    return {"bytes": image_bytes(store, digest), "path": f"{digest}.png"}


def default_output(store: RunStore, fmt: str) -> str | Path:
    return store.where(f"exports/{fmt}")


MANIFEST = "nhr-export.json"


@contextmanager
def output_folder(output: str | Path, run_root: str | Path) -> Iterator[FolderWriter]:
    """A writer for the whole output folder, which replaces any earlier export there: on local
    disk the folder is written beside it and renamed into place (a reader never sees half an
    export); on object storage each file appears whole and files of an older export that this
    one does not write are removed (nhr/storage.py `replace_folder`).

    Since the folder is replaced whole, it must be new, empty or an earlier export (it holds
    MANIFEST), and it must not hold the run or lie in it outside RUN/exports/."""
    location = str(output).rstrip("/")
    if is_url(location):
        parent, name = location.rsplit("/", 1)
        if "://" not in parent or parent.endswith(":/"):
            raise ExportError(f"{output}: name a folder inside the bucket, not the bucket itself")
        run = str(run_root).rstrip("/")
    else:
        path = Path(location.removeprefix("file://")).resolve()
        parent, name, location = str(path.parent), path.name, str(path)
        if not name:
            raise ExportError(f"{output}: not a folder to export into")
        run = str(Path(run_root).resolve())
    if f"{run}/".startswith(f"{location}/") or (
        location.startswith(f"{run}/") and not location.startswith(f"{run}/exports/")
    ):
        raise ExportError(
            f"{output}: would replace files of the run {run_root}; pass an --output outside "
            "it or under its exports/ folder"
        )
    storage: Storage = open_storage(parent)
    if isinstance(storage, LocalStorage) and (storage.root / name).is_file():
        raise ExportError(f"{output}: is a file; pass --output a folder")
    if not storage.exists(f"{name}/{MANIFEST}") and _holds_files(storage, name):
        raise ExportError(
            f"{output}: is not empty and holds no earlier nhr export; pass a new or empty folder"
        )
    with storage.replace_folder(name) as folder:
        yield folder


def _holds_files(storage: Storage, folder: str) -> bool:
    if isinstance(storage, LocalStorage):
        path = storage.root / folder
        return path.is_dir() and any(path.iterdir())
    # object storage: every file under the prefix, nested ones too, since replace_folder
    # removes all of them that the new export does not write
    return bool(storage._all_names(folder))


def count_by(rows: Iterator[dict[str, Any]], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[key]] = counts.get(row[key], 0) + 1
    return counts
