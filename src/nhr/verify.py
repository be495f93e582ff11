"""Check a run directory against itself: `nhr verify RUN`, and the repair at the start of
`nhr mine`.

What is checked:

- every completion marker: readable, and its table exists, is readable parquet, has the row
  count the marker recorded and (markers written since nhr recorded it) the same SHA-256;
- every image any stage table references: it exists, its bytes hash to its name and (`nhr
  verify` only) it decodes;
- the dataset against the release stage: every released `ok` row is in it once, nothing else,
  and each embedded image has the bytes of the store's image (`nhr verify` only; the start of
  `nhr mine` checks the dataset files are whole and hold the rows the export marker says).

Each problem names the file and the (stage, shard) whose redo repairs it: a damaged table is
repaired by redoing its own shard (a global stage: the whole stage), a damaged or missing
image by redoing the first shard that references it, which is the one that made it (only
`generate` and `edit` make images, and a shard's images never leave its shard). Later stages
need no repair of their own: each marker records the digests of the tables its shard read,
and the executor redoes a shard whose inputs changed (deterministic ids and seeds make a redo
identical, so usually nothing downstream runs again).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhr.config import NhrConfig
from nhr.pipeline import EXPORT, base_name, build_stages, release_stage
from nhr.store import RunDirError, RunStore, first_line, parse_table

log = logging.getLogger(__name__)

# Columns holding image digests, by stage table; a stage not listed references no image.
IMAGE_COLUMNS = {
    "design": ("source_image",),  # a photo run's normalised photos (sources.kind: images)
    "generate": ("image",),
    "edit": ("source_image", "edited_image"),
    "select": ("source_image", "edited_image"),
    "invert": ("source_image", "edited_image"),
    "backward": ("source_image", "edited_image"),
    "compose": ("source_image", "edited_image"),
}


@dataclass(frozen=True)
class Problem:
    path: Path | str  # the file's path, or its URL on object storage
    what: str
    stage: str | None = None  # the stage whose redo repairs it
    shard: int | None = None  # None: the whole (global) stage
    image: str | None = None  # the digest of a damaged image, which the repair deletes

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def decode_problem(data: bytes, full: bool = True) -> str | None:
    """None when the bytes decode as an image, else what is wrong.

    `full` decodes every pixel (about 14 ms for a 1 MP PNG). Otherwise a PNG is checked
    chunk by chunk against its CRCs up to its end marker (about 0.4 ms), which catches a
    truncated or corrupted file but not a PNG whose encoder wrote broken pixel data with
    valid checksums; other formats are always decoded fully."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if full or image.format != "PNG":
                image.load()
            else:
                image.verify()
    except Exception as error:  # PIL raises many types for broken data
        return f"{type(error).__name__}: {error}"[:200]
    return None


def check_run(store: RunStore, config: NhrConfig, *, thorough: bool = True) -> list[Problem]:
    """Every problem found in the run directory, shard by shard. `thorough` (nhr verify) also
    decodes every image and compares the dataset's image bytes; the check at the start of
    `nhr mine` leaves both out to stay cheap. Memory stays flat: a shard's images are only
    referenced by that shard's tables, so they are checked and forgotten shard by shard."""
    problems: list[Problem] = []
    shard_total = _shard_total(store, problems)
    tables_by_shard: dict[int, list[tuple]] = {}
    for stage in build_stages(config):  # stage order: the first table to name an image made it
        for shard, *table in _finished_tables(
            store, stage.name, stage.global_scope, shard_total, problems
        ):
            tables_by_shard.setdefault(shard, []).append((stage.name, *table))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for shard in sorted(tables_by_shard):
            producers: dict[str, tuple[str, int | None]] = {}  # digest -> what redoes it
            for stage, key, rows, digest, repair_shard in tables_by_shard[shard]:
                table = _check_table(store, key, rows, digest, problems, stage, repair_shard)
                for column in IMAGE_COLUMNS.get(base_name(stage), ()) if table is not None else ():
                    if column not in table.column_names:  # a table of an older nhr
                        continue
                    for image in table.column(column).to_pylist():
                        if image and image not in producers:
                            producers[image] = (stage, repair_shard)
            problems += _check_images(store, producers, thorough, pool)
    problems += _check_dataset(store, config, shard_total, thorough=thorough)
    return problems


def _shard_total(store: RunStore, problems: list[Problem]) -> int | None:
    try:
        marker = store.read_marker("design")
    except RunDirError as error:
        problems.append(Problem(error.path, error.problem, "design", None))
        return None
    return int(marker["shards"]) if marker else None


def _finished_tables(
    store: RunStore,
    stage: str,
    global_scope: bool,
    shard_total: int | None,
    problems: list[Problem],
) -> Iterable[tuple[int, str, int | None, str | None, int | None]]:
    """(shard, table key, expected rows, expected digest, repair shard) of every table a
    marker says is finished."""
    if global_scope:
        try:
            marker = store.read_marker(stage)
        except RunDirError as error:
            problems.append(Problem(error.path, error.problem, stage, None))
            return
        if marker is None:
            return
        count = len(marker["tables"]) if "tables" in marker else shard_total
        if stage == "design":
            count = int(marker["shards"])
        rows = marker.get("table_rows") or [None] * (count or 0)
        digests = marker.get("tables") or [None] * (count or 0)
        for shard in range(count or 0):
            yield shard, store.shard_key(stage, shard), rows[shard], digests[shard], None
        return
    for shard in store.done_shards(stage):
        try:
            marker = store.read_marker(stage, shard)
        except RunDirError as error:
            problems.append(Problem(error.path, error.problem, stage, shard))
            continue
        yield (
            shard,
            store.shard_key(stage, shard),
            marker.get("rows"),
            marker.get("table_sha256"),
            shard,
        )


def _check_table(store, key, rows_expected, digest_expected, problems, stage, repair_shard):
    path = store.where(key)

    def damaged(what: str) -> None:
        problems.append(Problem(path, what, stage, repair_shard))

    try:
        data = store.storage.read_bytes(key)
    except FileNotFoundError:
        damaged("table missing although its stage is marked done")
        return None
    if digest_expected is not None and hashlib.sha256(data).hexdigest() != digest_expected:
        damaged("table damaged (its SHA-256 differs from the one its marker recorded)")
        return None
    try:
        table = parse_table(path, data)
    except RunDirError as error:
        damaged(error.problem)
        return None
    if rows_expected is not None and table.num_rows != rows_expected:
        damaged(f"table has {table.num_rows} rows, its marker says {rows_expected}")
        return None
    return table


def _check_images(
    store: RunStore, producers: dict[str, tuple[str, int | None]], decode: bool, pool
) -> list[Problem]:
    def check(digest: str) -> str | None:
        try:
            data = store.storage.read_bytes(store.images.key(digest))
        except FileNotFoundError:
            return "image missing"
        if hashlib.sha256(data).hexdigest() != digest:
            return "image damaged (its bytes do not match its name)"
        if decode:
            problem = decode_problem(data)
            if problem is not None:
                return f"image does not decode ({problem})"
        return None

    digests = list(producers)
    # hashing and PNG decoding release the GIL: the pool's threads use every core
    results = pool.map(check, digests, chunksize=16)
    return [
        Problem(store.images.where(digest), what, *producers[digest], image=digest)
        for digest, what in zip(digests, results)
        if what is not None
    ]


def _check_dataset(
    store: RunStore, config: NhrConfig, shard_total: int | None, thorough: bool
) -> list[Problem]:
    import pyarrow.parquet as pq

    try:
        marker = store.read_marker(EXPORT)
    except RunDirError as error:
        return [Problem(error.path, error.problem, EXPORT, None)]
    if marker is None:
        return []
    data_dir = store.where("dataset/data")

    def problem(path: Path | str, what: str) -> Problem:
        return Problem(path, what, EXPORT, None)

    files = [
        f"dataset/data/{name}"
        for name in store.storage.names("dataset/data")
        if name.startswith("train-") and name.endswith(".parquet")
    ]
    if not files:
        return [problem(data_dir, "dataset missing although the export is marked done")]
    expected = _released(store, release_stage(config), shard_total) if thorough else None
    problems: list[Problem] = []
    counts: Counter[str] = Counter()
    total = 0
    for key in files:
        path = store.where(key)
        try:
            with store.storage.open_read(key) as handle:
                parquet = pq.ParquetFile(handle)  # reads the footer: a truncated file fails here
                total += parquet.metadata.num_rows
                if expected is None:
                    continue
                for batch in parquet.iter_batches(batch_size=32, use_threads=False):
                    for row in batch.to_pylist():
                        counts[row["sample_id"]] += 1
                        wrong = _row_problem(row, expected)
                        if wrong:
                            problems.append(problem(path, wrong))
        except Exception as error:  # pyarrow raises several types for a damaged file
            problems.append(problem(path, f"damaged dataset file ({first_line(error)})"))
    if not problems and total != marker["summary"]["rows"]:
        problems.append(
            problem(data_dir, f"{total} rows, the export marker says {marker['summary']['rows']}")
        )
    if expected is not None:
        missing = sorted(set(expected) - set(counts))
        extra = sorted(set(counts) - set(expected))
        twice = sorted(k for k, n in counts.items() if n > 1)
        for label, ids in (("missing from", missing), ("not released but in", extra)):
            if ids:
                problems.append(
                    problem(
                        data_dir, f"{len(ids)} released triplets {label} the dataset, e.g. {ids[0]}"
                    )
                )
        if twice:
            problems.append(problem(data_dir, f"{len(twice)} triplets twice, e.g. {twice[0]}"))
    return problems


def _released(
    store: RunStore, release: str, shard_total: int | None
) -> dict[str, tuple[str, str]] | None:
    """triplet id -> (source digest, edited digest) of every released row; None when a
    release table cannot be read (that problem is reported on its own)."""
    released: dict[str, tuple[str, str]] = {}
    for shard in range(shard_total or 0):
        try:
            rows = store.read_rows(release, shard)
        except RunDirError:
            return None
        for row in rows:
            if row["status"] == "ok":
                released[row["triplet_id"]] = (row["source_image"], row["edited_image"])
    return released


def _row_problem(row: dict[str, Any], expected: dict[str, tuple[str, str]]) -> str | None:
    images = expected.get(row["sample_id"])
    if images is None:
        return None  # reported as not released
    for column, digest in zip(("source_image", "edited_image"), images):
        data = (row[column] or {}).get("bytes") or b""
        if hashlib.sha256(data).hexdigest() != digest:
            return f"{row['sample_id']}: {column} differs from the store's image {digest}"
    return None


def repair(store: RunStore, config: NhrConfig) -> list[Problem]:
    """The start of `nhr mine`: find damage and make the run redo what repairs it.

    Deletes the completion markers of damaged shards (a global stage: its one marker),
    damaged images, and, when anything was damaged, the export marker and the dataset. The
    executor then redoes exactly those shards; later shards whose inputs come back different
    are redone too (their markers record what they read)."""
    problems = check_run(store, config, thorough=False)
    for problem in problems:
        log.warning("damaged: %s; redoing %s", problem, _unit(problem))
        if problem.stage is None:
            continue
        if problem.image is not None:
            store.storage.delete(store.images.key(problem.image))
        if problem.stage == EXPORT:
            continue
        store.remove_marker(problem.stage, problem.shard)
    if problems:
        store.remove_marker(EXPORT, None)
        store.storage.delete_folder("dataset")
    return problems


def _unit(problem: Problem) -> str:
    if problem.stage == EXPORT:
        return "the export"
    if problem.shard is None:
        return f"stage {problem.stage}"
    return f"stage {problem.stage}, shard {problem.shard}"


def render_verify(run_dir: Path | str) -> tuple[str, int]:
    """`nhr verify RUN`: the report and the exit status (0 clean, 1 damage found)."""
    from nhr.config import parse_config

    store = RunStore(run_dir)
    data = store.read_config()
    if data is None:
        raise RunDirError(
            run_dir,
            "not an nhr run directory (no config.yaml)",
            "pass the folder given to `nhr mine --run-dir`",
        )
    problems = check_run(store, parse_config(data), thorough=True)
    lines = [f"{problem} (redo: {_unit(problem)})" for problem in problems]
    if problems:
        shards = {(p.stage, p.shard) for p in problems}
        lines.append(
            f"{len(problems)} problems in {run_dir} ({len(shards)} shards or stages to redo); "
            "`nhr mine` with the same config and --run-dir redoes them"
        )
        return "\n".join(lines), 1
    return f"{run_dir}: no damage found", 0
