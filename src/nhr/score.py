"""`nhr score`: a judge scores a random sample of any image-editing dataset.

The NHR paper (arXiv 2507.14119, Table 3) scored 5,000 random triplets of each public
editing dataset with its validator and compared the datasets by their mean scores. This does
the same with any judge config (its model for `--role`, asked and read exactly as the validate
stage asks: nhr.stages.validate.judge_scores), for datasets in the common layouts:

- a Parquet file or a folder of Parquet files (Hugging Face datasets export images as structs
  {bytes, path}; plain binary columns and file paths relative to the dataset work too);
- an imagefolder: a folder with metadata.jsonl (or .csv) whose `*file_name` columns name the
  images;
- a WebDataset: a .tar (or a folder of them) whose members `KEY.EXT` form one sample per KEY;
  a column is the member's EXT (`source.png`, `txt`, or `json:field` for a field of KEY.json);
- any other string: a dataset on the Hugging Face hub, `ID` or `ID:SPLIT` (default split
  train), read with the `datasets` library, streamed (a shuffle buffer, then the first N rows),
  so only about the sample is downloaded.

Columns are found by their usual names (InstructPix2Pix, MagicBrush, HQ-Edit, NHR-Edit...) or
given with `--columns source=...,edited=...,instruction=...`. Every image is checked before the
judge sees it; a corrupt, truncated, oversized (decompression bomb) or non-RGB image, or a
missing value, rejects the sample with that reason, counted per dataset, never a crash.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nhr.sources import MAX_PIXELS, decode_checked, read_metadata
from nhr.sources import image_bytes as _image_value

# Usual column names, most specific first (InstructPix2Pix: original_image / edited_image /
# edit_prompt; MagicBrush: source_img / target_img / instruction; HQ-Edit: input_image /
# output_image / edit; NHR-Edit: source_image / edited_image / edit_instruction).
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "source": (
        "source_image",
        "original_image",
        "source_img",
        "input_image",
        "input_img",
        "source_file_name",
        "input_image_file_name",
        "source",
        "src",
    ),
    "edited": (
        "edited_image",
        "target_img",
        "output_image",
        "output_img",
        "target_image",
        "edited_file_name",
        "output_image_file_name",
        "file_name",
        "edited",
        "target",
    ),
    "instruction": ("edit_instruction", "instruction", "edit_prompt", "edit", "prompt", "txt"),
}
ROUNDS = 2000  # bootstrap rounds (the paper's B)
CHUNK = 64  # Parquet rows read at a time

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One triplet as read from a dataset: image bytes (or None) and the instruction, or the
    reason it could not be read at all."""

    source: Any = None
    edited: Any = None
    instruction: Any = None
    reason: str | None = None


@dataclass
class DatasetScores:
    name: str
    scores: list[tuple[float, float]] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)


# --- columns -----------------------------------------------------------------------------------


def parse_columns(text: str | None) -> dict[str, str]:
    """`source=a,edited=b,instruction=c` -> {"source": "a", ...}."""
    if not text:
        return {}
    mapping = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in COLUMN_NAMES or not value.strip():
            raise ValueError(
                f"--columns: {part!r} is not ROLE=COLUMN with ROLE one of {', '.join(COLUMN_NAMES)}"
            )
        mapping[key] = value.strip()
    return mapping


def resolve_columns(available: list[str], given: dict[str, str]) -> dict[str, str]:
    """The column of each role: given, else the first usual name present."""
    resolved = {}
    for role, names in COLUMN_NAMES.items():
        if role in given:
            if given[role] not in available and not given[role].startswith("json:"):
                raise ValueError(
                    f"column {given[role]!r} ({role}) not in the dataset; it has: "
                    f"{', '.join(available)}"
                )
            resolved[role] = given[role]
            continue
        found = next((n for n in names if n in available), None)
        if found is None:
            raise ValueError(
                f"no {role} column found among {', '.join(available)}; name it with "
                f"--columns {role}=COLUMN"
            )
        resolved[role] = found
    return resolved


# --- reading a sample --------------------------------------------------------------------------


def read_sample(
    spec: str, count: int, seed: int, columns: dict[str, str]
) -> tuple[str, Iterator[Sample], int]:
    """(dataset name, up to `count` random samples, rows in the dataset or -1 if unknown).
    The samples are read as they are iterated, so a large sample is never all in memory."""
    path = Path(spec)
    random = np.random.default_rng(seed)
    looks_local = path.suffix in (".parquet", ".tar") or spec.startswith(("/", ".", "~"))
    if looks_local and not path.exists():
        raise ValueError(f"{spec}: no such file or folder")
    if path.is_dir() and any(path.glob("metadata.*")):
        return path.name, *_imagefolder(path, count, random, columns)
    if path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar"))):
        return path.stem if path.is_file() else path.name, *_webdataset(
            path, count, random, columns
        )
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        return path.stem if path.is_file() else path.name, *_parquet(path, count, random, columns)
    if path.exists():
        raise ValueError(
            f"{spec}: not a Parquet file or folder, an imagefolder (metadata.jsonl) or a "
            "WebDataset (.tar)"
        )
    return spec.replace("/", "__"), *_hub(spec, count, seed, columns)


def _pick(total: int, count: int, random: np.random.Generator) -> np.ndarray:
    return np.sort(random.choice(total, size=min(count, total), replace=False))


def _sample_of(row: dict[str, Any], columns: dict[str, str], base: Path | None) -> Sample:
    try:
        return Sample(
            _image_value(row.get(columns["source"]), base),
            _image_value(row.get(columns["edited"]), base),
            row.get(columns["instruction"]),
        )
    except (OSError, TypeError, ValueError):
        return Sample(reason="unreadable_row")


def _parquet(path: Path, count: int, random, columns) -> tuple[Iterator[Sample], int]:
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    resolved = resolve_columns(dataset.schema.names, columns)
    total = dataset.count_rows()
    picked = _pick(total, count, random)
    base = path if path.is_dir() else path.parent

    def samples() -> Iterator[Sample]:
        for start in range(0, len(picked), CHUNK):
            chunk = picked[start : start + CHUNK]
            table = dataset.take(chunk, columns=sorted(set(resolved.values())))
            for row in table.to_pylist():
                yield _sample_of(row, resolved, base)

    return samples(), total


def _imagefolder(path: Path, count: int, random, columns) -> tuple[Iterator[Sample], int]:
    rows = read_metadata(sorted(path.glob("metadata.*"))[0])
    available = sorted({key for row in rows for key in row})
    resolved = resolve_columns(available, columns)
    picked = _pick(len(rows), count, random)
    return (_sample_of(rows[i], resolved, path) for i in picked), len(rows)


def _webdataset(path: Path, count: int, random, columns) -> tuple[Iterator[Sample], int]:
    shards = [path] if path.is_file() else sorted(path.glob("*.tar"))
    members: dict[str, dict[str, tuple[Path, tarfile.TarInfo]]] = {}
    for shard in shards:
        listed = 0
        try:
            with tarfile.open(shard) as archive:
                for info in archive:
                    listed += 1
                    if not info.isfile():
                        continue
                    name = info.name.rsplit("/", 1)[-1]
                    key, _, extension = name.partition(".")
                    folder = info.name[: -len(name)]
                    files = members.setdefault(folder + key, {})
                    files[extension] = (shard, info)
                    files.setdefault(extension.split(".")[0], (shard, info))  # source.png
        except (OSError, tarfile.TarError) as error:
            if not listed:
                detail = str(error).splitlines()[0].rstrip(":") if str(error) else ""
                raise ValueError(f"{shard} is not a readable tar archive ({detail})") from None
            # a shard cut short: its samples up to the cut are kept, the last one may be
            # incomplete (its missing parts are counted as unreadable rows)
            log.warning("%s is cut short after %d members (%s)", shard, listed, error)
    keys = sorted(members)
    available = sorted({e for m in members.values() for e in m})
    given = dict(columns)
    defaults = {"instruction": "txt"} if "txt" in available else {}
    resolved = resolve_columns(available, {**defaults, **given})

    def samples() -> Iterator[Sample]:
        for index in _pick(len(keys), count, random):
            yield _webdataset_sample(members[keys[index]], resolved)

    return samples(), len(keys)


def _webdataset_sample(files: dict[str, Any], resolved: dict[str, str]) -> Sample:
    row: dict[str, Any] = {}
    try:
        for role, column in resolved.items():
            if column.startswith("json:"):
                shard, info = files["json"]
                row[column] = json.loads(_member(shard, info)).get(column[5:])
            elif column in files:
                data = _member(*files[column])
                row[column] = data.decode("utf-8") if role == "instruction" else data
    except (OSError, KeyError, ValueError, tarfile.TarError):
        return Sample(reason="unreadable_row")
    return _sample_of(row, resolved, None)


def _member(shard: Path, info: tarfile.TarInfo) -> bytes:
    with tarfile.open(shard) as archive:
        handle = archive.extractfile(info)
        return handle.read() if handle is not None else b""


def _hub(spec: str, count: int, seed: int, columns) -> tuple[Iterator[Sample], int]:
    """A hub dataset, streamed: a shuffled buffer, then the first `count` rows."""
    import datasets

    from nhr.storage import first_line

    name, _, split = spec.partition(":")
    try:
        stream = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as error:  # offline, a mistyped id or path, no access: for the user to fix
        raise ValueError(
            f"{spec}: no such local file or folder, and no Hugging Face hub dataset could be "
            f"opened ({type(error).__name__}: {first_line(error)})"
        ) from None
    stream = stream.shuffle(seed=seed, buffer_size=max(1000, 4 * count))

    def samples() -> Iterator[Sample]:
        resolved = None
        for row in stream.take(count):
            if resolved is None:
                resolved = resolve_columns(list(row), columns)
            yield _sample_of(row, resolved, None)

    return samples(), -1


# --- checking an image -------------------------------------------------------------------------


def check_image(data: bytes | None, max_pixels: int = MAX_PIXELS) -> str | None:
    """None if the image is a readable RGB image of at most `max_pixels`, else the reason:
    missing_image, corrupt_image, truncated_image, oversized_image or non_rgb_image. The size is
    read from the header before any pixel is decoded."""
    image = decode_checked(data, max_pixels)
    if isinstance(image, str):
        return image
    return "non_rgb_image" if image.mode != "RGB" else None


# --- scoring -----------------------------------------------------------------------------------


def score_datasets(
    specs: list[str],
    config_path: str | Path,
    role: str = "validator",
    sample: int = 500,
    columns: dict[str, str] | None = None,
    seed: int = 0,
    max_pixels: int = MAX_PIXELS,
    rounds: int = ROUNDS,
    cache: Any = None,
) -> dict[str, Any]:
    """scores.json: {"datasets": {NAME: {"n", "adherence_mean", "adherence_ci",
    "aesthetics_mean", "aesthetics_ci", "pass_rate", "pass_rate_ci", "rejected"}}, ...}.
    `cache`: a Storage whose cache/ folder keeps the judge's answers (`--output DIR`), so
    scoring the same sample again (after a kill) asks only what was not answered yet."""
    import tempfile

    from nhr.calibrate import load_judge_config
    from nhr.calls import Failure
    from nhr.stages.validate import judge_scores
    from nhr.store import ImageStore

    config = load_judge_config(config_path)
    validate = config.validate_
    threshold = (validate.adherence_threshold, validate.aesthetics_threshold)
    results: dict[str, Any] = {}
    for index, spec in enumerate(specs):
        name, samples, total = read_sample(spec, sample, seed + index, columns or {})
        if name in results:
            name = f"{name}-{index}"
        scored = DatasetScores(name)
        with tempfile.TemporaryDirectory(prefix="nhr-score-") as folder:
            images = ImageStore(folder)
            items = []
            for one in samples:
                reason = one.reason or _reason(one, max_pixels)
                if reason:
                    scored.rejected[reason] += 1
                    continue
                items.append(
                    {
                        "source_image": images.put(one.source),
                        "edited_image": images.put(one.edited),
                        "instruction": one.instruction.strip(),
                    }
                )
            answers = judge_scores(config, role, images, items, cache=cache) if items else []
            for result in answers:
                if isinstance(result, Failure):
                    scored.rejected["judge_" + result.reason] += 1
                else:
                    scored.scores.append((float(result[0]), float(result[1])))
        results[name] = summarize(scored, threshold, rounds, seed) | {
            "source": spec,
            "rows": total,
        }
    return {
        "judge": {"config": str(config_path), "role": role},
        "threshold": {"adherence": threshold[0], "aesthetics": threshold[1]},
        "sample": sample,
        "seed": seed,
        "bootstrap": {"rounds": rounds, "level": 0.95},
        "datasets": results,
    }


def _reason(sample: Sample, max_pixels: int) -> str | None:
    if not isinstance(sample.instruction, str) or not sample.instruction.strip():
        return "missing_instruction"
    for data in (sample.source, sample.edited):
        reason = check_image(data, max_pixels)
        if reason:
            return reason
    return None


def summarize(
    scored: DatasetScores, threshold: tuple[float, float], rounds: int, seed: int
) -> dict[str, Any]:
    """Means, geometric mean, pass rate (both scores >= T) and their bootstrap 95 % CIs."""
    n = len(scored.scores)
    out: dict[str, Any] = {"n": n, "rejected": dict(sorted(scored.rejected.items()))}
    keys = ("adherence", "aesthetics", "geometric", "pass_rate")
    means = ("adherence_mean", "aesthetics_mean", "geometric_mean", "pass_rate")
    if n == 0:
        for key, mean in zip(keys, means):
            out[mean], out[f"{key}_ci"] = None, [None, None]
        return out
    values = np.array(scored.scores, dtype=float)
    passing = (
        (values[:, 0] >= threshold[0] - 1e-6) & (values[:, 1] >= threshold[1] - 1e-6)
    ).astype(float)
    geometric = np.sqrt(np.clip(values[:, 0], 0, None) * np.clip(values[:, 1], 0, None))
    picks = np.random.default_rng(seed).integers(0, n, size=(rounds, n))
    columns = (values[:, 0], values[:, 1], geometric, passing)
    for key, mean, column in zip(keys, means, columns):
        boot = column[picks].mean(axis=1)
        out[mean] = round(float(column.mean()), 6)
        out[f"{key}_ci"] = [round(float(v), 6) for v in np.percentile(boot, [2.5, 97.5])]
    return out


# --- output ------------------------------------------------------------------------------------


def render_table(report: dict[str, Any]) -> str:
    def cell(mean: Any, ci: Any) -> str:
        if mean is None:
            return "n/a"
        return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    threshold = report["threshold"]
    lines = [
        f"{'dataset':<28}{'n':>6}  {'adherence':<24}{'aesthetics':<24}"
        f"{'pass (>= ' + format(threshold['adherence'], 'g') + ')':<24}rejected",
    ]
    for name, d in report["datasets"].items():
        rejected = ", ".join(f"{k} {v}" for k, v in d["rejected"].items()) or "-"
        lines.append(
            f"{name[:27]:<28}{d['n']:>6}  {cell(d['adherence_mean'], d['adherence_ci']):<24}"
            f"{cell(d['aesthetics_mean'], d['aesthetics_ci']):<24}"
            f"{cell(d['pass_rate'], d['pass_rate_ci']):<24}{rejected}"
        )
    return "\n".join(lines)


def plot_png(report: dict[str, Any]) -> bytes:
    """Mean adherence and aesthetics per dataset with their 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["datasets"])
    figure, axes = plt.subplots(figsize=(max(5, 1.4 * len(names) + 2), 4), dpi=100)
    width = 0.38
    for offset, key in ((-width / 2, "adherence"), (width / 2, "aesthetics")):
        means, low, high = [], [], []
        for name in names:
            d = report["datasets"][name]
            mean = d[f"{key}_mean"]
            ci = d[f"{key}_ci"]
            means.append(math.nan if mean is None else mean)
            low.append(0 if mean is None else mean - ci[0])
            high.append(0 if mean is None else ci[1] - mean)
        axes.bar(
            np.arange(len(names)) + offset, means, width, yerr=[low, high], capsize=3, label=key
        )
    axes.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
    axes.set_ylabel("mean score (judge's scale)")
    axes.set_title("judge scores per dataset (95 % bootstrap intervals)")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
