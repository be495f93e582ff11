"""Source images that come from the user (`sources.kind: images`) instead of a generator.

Three steps, each small and deterministic:

- `open_source` lists what `sources.path` holds without reading any image: a folder of image
  files (searched recursively, hidden files skipped), an imagefolder (a folder with
  metadata.jsonl or metadata.csv naming its files), a Parquet file or a folder of them, or a
  dataset on the Hugging Face hub (`ID` or `ID:SPLIT`, default split train).
- `draw` orders the items by a hash of the run seed and each item's key (its path, or its
  row) and takes the first `sources.sample`: a uniform sample that needs no state, and a
  larger sample of the same run keeps every image of the smaller one.
- `normalise` turns the bytes of one file into the image the pipeline edits, or the reason it
  cannot be used: EXIF orientation applied, converted to RGB (transparency composited on
  white, CMYK and 16-bit converted), resized into the nearest-aspect ~1 MP bucket of
  `generate.buckets` (scaled to cover it, the small aspect difference cropped evenly from the
  longer side). Rejected, with a counted reason, never a crash: a corrupt file
  (`corrupt_image`), a truncated one (`truncated_image`), one with more than `max_pixels`
  pixels, read from its header before any pixel is decoded (`oversized_image`, a
  decompression bomb), and one whose shorter side is below `min_side` (`too_small`).

The normalised image is a PNG that keeps the text chunks of a PNG original (title, author,
copyright, and the simulator's scene truth, nhr/backends/sim/photos.py) and drops every other
piece of metadata (EXIF, GPS, ICC): a released dataset should not leak where a photo was taken.

`nhr score` (nhr/score.py) reads images from the same column values (`image_bytes`) and checks
them with the same decoding rules (`decode_checked`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhr.config import ConfigError
from nhr.ids import unit_interval

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MAX_PIXELS = 40_000_000  # larger images are rejected unread (a decompression bomb is one)
# Reasons a drawn item gives no source image, in the order they are checked.
REJECT_REASONS = (
    "missing_image",
    "unreadable_file",
    "corrupt_image",
    "oversized_image",
    "truncated_image",
    "too_small",
)


class SourceError(ConfigError):
    """The source cannot be read at all (no such folder, no images, no such column): a
    mistake in the config the user must fix, not a bad file (`nhr mine` prints it, exit 2)."""


@dataclass(frozen=True)
class Entry:
    """One drawn item: its image bytes (None with `reason` when there are none) and where it
    came from."""

    data: bytes | None
    file: str | None  # path relative to the source folder (folders, imagefolders)
    row: int | None  # row of the dataset (imagefolder metadata, Parquet, hub)
    license: str | None
    reason: str | None = None


@dataclass(frozen=True)
class Listing:
    """What a source holds: `count` items, each named by `key(i)` (what the draw hashes) and
    read, several at a time, by `read(indices)`."""

    origin: str  # the folder or dataset, as configured
    count: int
    key: Callable[[int], str]
    read: Callable[[list[int]], list[Entry]]


# --- listing a source ----------------------------------------------------------------------


def open_source(spec: str, column: str = "image", license_column: str = "license") -> Listing:
    """The listing of `sources.path`; SourceError with what to fix when it cannot be read."""
    path = Path(spec).expanduser()
    looks_local = path.suffix == ".parquet" or spec.startswith(("/", ".", "~"))
    if path.is_dir():
        metadata = sorted(path.glob("metadata.jsonl")) + sorted(path.glob("metadata.csv"))
        if metadata:
            return _imagefolder(spec, path, metadata[0], column, license_column)
        if any(path.glob("*.parquet")):
            return _parquet(spec, sorted(path.glob("*.parquet")), column, license_column)
        return _folder(spec, path)
    if path.is_file():
        if path.suffix == ".parquet":
            return _parquet(spec, [path], column, license_column)
        raise SourceError(f"sources.path {spec}: not a folder or a .parquet file")
    if looks_local or path.exists():
        raise SourceError(f"sources.path {spec}: no such folder or file")
    return _hub(spec, column, license_column)


def _folder(spec: str, path: Path) -> Listing:
    files = sorted(
        relative.as_posix()
        for relative in (p.relative_to(path) for p in path.rglob("*"))
        if relative.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in relative.parts)
        and (path / relative).is_file()
    )
    if not files:
        raise SourceError(
            f"sources.path {spec}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder"
        )

    def read(indices: list[int]) -> list[Entry]:
        return [_file_entry(path, files[i], None, None) for i in indices]

    return Listing(spec, len(files), lambda i: files[i], read)


def _file_entry(base: Path, name: str, row: int | None, license: str | None) -> Entry:
    try:
        data = (base / name).read_bytes()
    except OSError:
        return Entry(None, name, row, license, "unreadable_file")
    return Entry(data, name, row, license)


def _imagefolder(
    spec: str, path: Path, metadata: Path, column: str, license_column: str
) -> Listing:
    try:
        rows = read_metadata(metadata)
    except (OSError, ValueError) as error:
        raise SourceError(f"sources.path {spec}: cannot read {metadata.name}: {error}") from None
    columns = sorted({key for row in rows for key in row})
    image_column = column if column in columns else "file_name"
    if image_column not in columns:
        raise SourceError(
            f"sources.path {spec}: {metadata.name} has no column {column!r} or file_name; "
            f"it has: {', '.join(columns)} (set sources.column)"
        )

    def read(indices: list[int]) -> list[Entry]:
        entries = []
        for i in indices:
            row = rows[i]
            license = _text(row.get(license_column))
            name = row.get(image_column)
            if not isinstance(name, str) or not name:
                entries.append(Entry(None, None, i, license, "missing_image"))
            else:
                entries.append(_file_entry(path, name, i, license))
        return entries

    return Listing(spec, len(rows), lambda i: f"row {i}", read)


def read_metadata(metadata: Path) -> list[dict[str, Any]]:
    """The rows of an imagefolder's metadata.jsonl or metadata.csv."""
    if metadata.suffix == ".csv":
        with metadata.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    lines = metadata.read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _parquet(spec: str, files: list[Path], column: str, license_column: str) -> Listing:
    import pyarrow.dataset as ds

    dataset = ds.dataset([str(f) for f in files], format="parquet")
    names = dataset.schema.names
    if column not in names:
        raise SourceError(
            f"sources.path {spec}: no column {column!r}; it has: {', '.join(names)} "
            "(set sources.column)"
        )
    wanted = [column] + ([license_column] if license_column in names else [])
    base = files[0].parent

    def read(indices: list[int]) -> list[Entry]:
        if not indices:
            return []
        order = sorted(set(indices))
        table = dataset.take(order, columns=wanted).to_pylist()
        by_row = dict(zip(order, table))
        return [
            _value_entry(by_row[i][column], base, i, by_row[i].get(license_column)) for i in indices
        ]

    return Listing(spec, dataset.count_rows(), lambda i: f"row {i}", read)


def _hub(spec: str, column: str, license_column: str) -> Listing:
    """A hub dataset, downloaded once into the Hugging Face cache (memory-mapped, so any row
    is read without holding the split in memory)."""
    try:
        import datasets
    except ImportError:
        raise SourceError(
            f"sources.path {spec}: not a local folder or file; reading a hub dataset needs "
            "the `datasets` package (pip install datasets)"
        ) from None
    name, _, split = spec.partition(":")
    try:
        table = datasets.load_dataset(name, split=split or "train")
    except Exception as error:  # the hub raises many types: say which dataset and why
        raise SourceError(f"sources.path {spec}: cannot load the dataset: {error}") from None
    if column not in table.column_names:
        raise SourceError(
            f"sources.path {spec}: no column {column!r}; it has: "
            f"{', '.join(table.column_names)} (set sources.column)"
        )
    feature = getattr(table, "features", {}).get(column)
    if type(feature).__name__ == "Image":  # raw {bytes, path}, not decoded PIL images
        table = table.cast_column(column, datasets.Image(decode=False))

    def read(indices: list[int]) -> list[Entry]:
        entries = []
        for i in indices:
            row = table[int(i)]
            entries.append(_value_entry(row.get(column), None, i, row.get(license_column)))
        return entries

    return Listing(spec, len(table), lambda i: f"row {i}", read)


def _value_entry(value: Any, base: Path | None, row: int, license: Any) -> Entry:
    try:
        data = image_bytes(value, base)
    except (OSError, TypeError, ValueError):
        return Entry(None, None, row, _text(license), "unreadable_file")
    if not data:
        return Entry(None, None, row, _text(license), "missing_image")
    return Entry(data, None, row, _text(license))


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def image_bytes(value: Any, base: Path | None) -> bytes | None:
    """Image bytes from a column value: bytes, a {bytes, path} struct (Hugging Face datasets),
    a decoded PIL image, or a path (relative to `base`)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
        if not value:
            return None
    if isinstance(value, str):
        location = Path(value) if base is None else base / value
        return location.read_bytes()
    if hasattr(value, "save"):  # a decoded PIL image (datasets' Image feature)
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"not an image value: {type(value).__name__}")


# --- drawing the sample --------------------------------------------------------------------


def draw(listing: Listing, seed: int, sample: int | None) -> list[int]:
    """The items of the run, in the order they get prompt indices: all of them (or the first
    `sample`) ordered by a hash of the seed and their key."""
    order = sorted(
        range(listing.count), key=lambda i: (unit_interval(seed, "source", listing.key(i)), i)
    )
    return order if sample is None else order[:sample]


# --- decoding and normalising one image ----------------------------------------------------


def decode_checked(data: bytes | None, max_pixels: int = MAX_PIXELS) -> Any:
    """The decoded PIL image (pixels loaded), or the reason it cannot be used: missing_image,
    corrupt_image, oversized_image (read from the header, before any pixel is decoded) or
    truncated_image."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "missing_image"
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            return "oversized_image"
        image.load()
    except Image.DecompressionBombError:
        return "oversized_image"
    except UnidentifiedImageError:
        return "corrupt_image"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return "truncated_image" if "truncated" in str(error).lower() else "corrupt_image"
    return image


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (the first of equals)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - ratio))


def to_rgb(image: Any) -> Any:
    """An RGB copy: transparency composited on white, 16-bit and CMYK converted."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        scaled = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class Normalised:
    png: bytes
    width: int
    height: int
    original_size: tuple[int, int]  # after EXIF orientation
    original_mode: str


def normalise(
    data: bytes | None,
    buckets: list[tuple[int, int]],
    min_side: int,
    max_pixels: int = MAX_PIXELS,
) -> Normalised | str:
    """The image the pipeline edits, or the reason (REJECT_REASONS) this one cannot be used."""
    from PIL import Image, ImageOps
    from PIL.PngImagePlugin import PngInfo

    image = decode_checked(data, max_pixels)
    if isinstance(image, str):
        return image
    texts = dict(getattr(image, "text", {}) or {}) if image.format == "PNG" else {}
    mode = image.mode
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block: the pixels are fine, keep them as stored
        upright = image
    width, height = upright.size
    if min(width, height) < min_side:
        return "too_small"
    rgb = to_rgb(upright)
    target_w, target_h = nearest_bucket(width, height, buckets)
    scale = max(target_w / width, target_h / height)
    cover = (max(target_w, math.ceil(width * scale)), max(target_h, math.ceil(height * scale)))
    resized = rgb.resize(cover, Image.Resampling.LANCZOS)
    left, top = (cover[0] - target_w) // 2, (cover[1] - target_h) // 2
    cropped = resized.crop((left, top, left + target_w, top + target_h))
    info = PngInfo()
    for key in sorted(texts):
        if isinstance(texts[key], str):
            info.add_text(key, texts[key], zip=True)
    buffer = io.BytesIO()
    cropped.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return Normalised(buffer.getvalue(), target_w, target_h, (width, height), mode)
