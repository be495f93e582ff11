"""The labels table: human (or simulated) ratings of triplets, and the ground truth made of them.

Public API (stable; `nhr calibrate`, `nhr score` and `nhr export-tuning` build on it):

- `SCHEMA`: the table's Arrow schema (docs/labels.md describes every column).
- `read_labels(location) -> list[dict]`: validated rows of a labels file (Parquet, CSV or
  JSONL), of a folder of such files, or of a run directory (its `labels/` folder); a local
  path or an object-storage URL. Every row has `item` filled in (derived from the images and
  the instruction for outside data). A bad row raises `LabelsError` naming the file, the line
  and what is wrong.
- `labels_table(rows) -> pyarrow.Table`: rows as a table with `SCHEMA`.
- `ground_truth(rows) -> {item: (instruction, aesthetics)}`: the paper's rater-bias-corrected
  labels (arXiv 2507.14119): rater j's bias b_j is the mean over j's items of
  (s_ij - mean_i), and an item's label is the mean over its raters of (s_ij - b_j). The
  arithmetic is the simulator's (`nhr.backends.sim.raters.corrected_labels`): one
  implementation, used for simulated and human ratings alike.
- `plain_means(rows)`: the uncorrected per-item means, for comparison.
- `item_id(source_image, edited_image, instruction)`: the id of an outside triplet.
- `write_labels(storage, key, rows)`: one whole Parquet file, written atomically.

A row: `item` (a run's candidate id, or empty for outside data), `source_image`,
`edited_image` (paths or URLs of outside data; empty for run items), `instruction` (the edit
instruction text), `category`, `rater`, `instruction_score`, `aesthetics_score` (floats
1-5), `comment`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

SCALE = (1.0, 5.0)
LABELS_FOLDER = "labels"  # RUN/labels/
SUFFIXES = (".parquet", ".csv", ".jsonl")

SCHEMA = pa.schema(
    [
        pa.field("item", pa.string()),
        pa.field("source_image", pa.string()),
        pa.field("edited_image", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("category", pa.string()),
        pa.field("rater", pa.string()),
        pa.field("instruction_score", pa.float64()),
        pa.field("aesthetics_score", pa.float64()),
        pa.field("comment", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
SCORES = ("instruction_score", "aesthetics_score")
TEXT_COLUMNS = tuple(name for name in COLUMNS if name not in SCORES)


class LabelsError(ValueError):
    """A labels file that cannot be used; the message names the file, the line (1-based, the
    header of a CSV being line 1) and what is wrong."""


def item_id(source_image: str, edited_image: str, instruction: str) -> str:
    """The stable id of an outside triplet (no run candidate id): a digest of its three parts."""
    text = json.dumps([source_image, edited_image, instruction], ensure_ascii=False)
    return "ext-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


# --- reading ---------------------------------------------------------------------------------


def outside_image_reader(location: str | Path) -> Callable[[str], bytes]:
    """Reads the image of an outside item (`source_image` / `edited_image`): a URL, an
    absolute path, or a path relative to the labels' folder (the labels file's folder, or the
    folder given), as the labels table's columns are documented (docs/labels.md)."""
    from nhr.storage import is_url, open_storage

    text = str(location)
    base = text.rpartition("/")[0] if text.endswith((".parquet", ".csv", ".jsonl")) else text

    def read(name: str) -> bytes:
        if is_url(name):
            parent, _, key = name.rpartition("/")
            return open_storage(parent).read_bytes(key)
        if Path(name).is_absolute():
            return Path(name).read_bytes()
        if is_url(base):  # relative to labels in object storage
            return open_storage(base).read_bytes(name)
        return (Path(base or ".") / name).read_bytes()

    return read


def read_labels(location: str | Path) -> list[dict[str, Any]]:
    """Validated rows of a labels file, a folder of labels files, or a run directory."""
    from nhr.storage import is_url, open_storage

    text = str(location)
    if text.endswith(SUFFIXES):
        parent, _, name = text.rstrip("/").rpartition("/")
        if is_url(text):
            storage = open_storage(parent)
        else:
            path = Path(location)
            storage, name = open_storage(path.parent), path.name
        return _read_file(storage, name)
    storage = open_storage(location)
    folder = LABELS_FOLDER if storage.exists("config.yaml") else ""
    names = [n for n in storage.names(folder) if n.endswith(SUFFIXES) and not n.startswith(".")]
    if not names:
        raise LabelsError(
            f"{storage.where(folder)}: no labels file (.parquet, .csv or .jsonl) found — "
            "pass a labels file, a folder of them, or a run directory rated with `nhr label`"
        )
    rows: list[dict[str, Any]] = []
    for name in names:
        rows.extend(_read_file(storage, f"{folder}/{name}" if folder else name))
    return rows


def _read_file(storage: Any, key: str) -> list[dict[str, Any]]:
    where = storage.where(key)
    try:
        data = storage.read_bytes(key)
    except FileNotFoundError:
        raise LabelsError(f"{where}: no such labels file") from None
    raw, first_line = _parse(where, key, data)
    return [validate_row(where, first_line + index, row) for index, row in enumerate(raw)]


def _parse(where: Any, key: str, data: bytes) -> tuple[list[dict[str, Any]], int]:
    """Raw rows and the line number of the first one."""
    if key.endswith(".parquet"):
        from nhr.store import table_from_bytes

        try:
            table = table_from_bytes(data)
        except pa.ArrowException as error:
            raise LabelsError(f"{where}: not a readable Parquet file ({error})") from None
        return table.to_pylist(), 1  # "line" of a Parquet file: the row number
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelsError(f"{where}: not UTF-8 text") from None
    if key.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        rows = []
        for row in reader:
            if None in row:
                raise LabelsError(f"{where}:{reader.line_num}: more values than header columns")
            rows.append(row)
        return rows, 2
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise LabelsError(f"{where}:{number}: not a JSON object ({error.args[0]})") from None
        if not isinstance(row, dict):
            raise LabelsError(f"{where}:{number}: not a JSON object")
        row["__line__"] = number
        rows.append(row)
    return rows, 1


def validate_row(where: Any, line: int, raw: dict[str, Any]) -> dict[str, Any]:
    """One raw row checked and normalised (item filled in); LabelsError names where:line."""
    line = raw.pop("__line__", line)
    here = f"{where}:{line}"
    unknown = sorted(set(raw) - set(COLUMNS))
    if unknown:
        raise LabelsError(
            f"{here}: unknown column(s) {', '.join(unknown)} (columns: {', '.join(COLUMNS)})"
        )
    row: dict[str, Any] = {}
    for name in TEXT_COLUMNS:
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            if isinstance(value, (int, float)) and name in ("item", "rater"):
                value = str(value)
            else:
                raise LabelsError(f"{here}: {name} must be text, got {value!r}")
        row[name] = value if value not in ("",) else None
    for name in SCORES:
        row[name] = _score(here, name, raw.get(name))
    if row["rater"] is None:
        raise LabelsError(f"{here}: rater is missing (every rating names its rater)")
    if row["item"] is None:
        parts = [row["source_image"], row["edited_image"], row["instruction"]]
        if None in parts:
            raise LabelsError(
                f"{here}: item is missing; give a run candidate id in `item`, or all of "
                "source_image, edited_image and instruction for outside data"
            )
        row["item"] = item_id(*parts)
    return row


def _score(here: str, name: str, value: Any) -> float:
    if value is None or value == "":
        raise LabelsError(f"{here}: {name} is missing")
    if isinstance(value, bool):
        raise LabelsError(f"{here}: {name} must be a number from 1 to 5, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit integer
        raise LabelsError(f"{here}: {name} must be a number from 1 to 5, got {value!r}") from None
    if not math.isfinite(number) or not SCALE[0] <= number <= SCALE[1]:
        raise LabelsError(f"{here}: {name} must be from 1 to 5, got {value!r}")
    return number


# --- writing ---------------------------------------------------------------------------------


def labels_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in COLUMNS} for row in rows], schema=SCHEMA
    )


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(labels_table(rows), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_labels(storage: Any, key: str, rows: list[dict[str, Any]]) -> None:
    """One whole Parquet file at `key` of a Storage (readers see the old file or the new one)."""
    storage.write_bytes(key, parquet_bytes(rows))


# --- ground truth ----------------------------------------------------------------------------


def _ratings(rows: list[dict[str, Any]]):
    """The rows as the simulator's Ratings (dense item and rater indices), and the item ids."""
    import numpy as np

    from nhr.backends.sim.raters import Ratings

    items: dict[str, int] = {}
    raters: dict[str, int] = {}
    for row in rows:
        items.setdefault(row["item"], len(items))
        raters.setdefault(row["rater"], len(raters))
    item = np.array([items[row["item"]] for row in rows], dtype=int)
    rater = np.array([raters[row["rater"]] for row in rows], dtype=int)
    scores = np.array([[row[s] for s in SCORES] for row in rows], dtype=float).reshape(-1, 2)
    ratings = Ratings(item, rater, np.zeros(len(rows), dtype=int), scores, np.zeros((0, 2)))
    return ratings, list(items)


def ground_truth(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """{item: (instruction, aesthetics)}: the mean of the item's bias-corrected scores."""
    from nhr.backends.sim.raters import corrected_labels

    return _item_labels(rows, corrected_labels)


def plain_means(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """{item: (instruction, aesthetics)}: the plain mean of the item's scores."""
    from nhr.backends.sim.raters import plain_labels

    return _item_labels(rows, plain_labels)


def _item_labels(
    rows: list[dict[str, Any]], labelled: Callable[[Any, int], Any]
) -> dict[str, tuple[float, float]]:
    """{item: (instruction, aesthetics)} as `labelled(ratings, items)` reads the rows."""
    if not rows:
        return {}
    ratings, items = _ratings(rows)
    labels = labelled(ratings, len(items))
    return {item: (float(a), float(b)) for item, (a, b) in zip(items, labels)}


def items_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{item: its first row} (the item's images, instruction and category)."""
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(row["item"], row)
    return first


def run_of_labels(location: str | Path, run: str | Path | None = None) -> Any:
    """The run whose candidates the labels rate: `run` (--run), or the run the labels live
    in (LABELS is RUN, RUN/labels or a file in it); None for labels of outside triplets."""
    from nhr.store import RunStore

    if run is not None:
        return RunStore(run)
    text = str(location).rstrip("/")
    for candidate in (text, text.rpartition("/")[0], text.rpartition("/")[0].rpartition("/")[0]):
        if candidate:
            store = RunStore(candidate)
            if store.has_config():
                return store
    return None
