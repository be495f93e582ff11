"""Parquet exports read with Hugging Face `datasets`: `hf` (the run's dataset layout) and `ip2p`
(the columns of diffusers' InstructPix2Pix training script).

    OUT/data/train-00000-of-00002.parquet   images embedded as {bytes, path}
    OUT/data/test-00000-of-00001.parquet
    OUT/README.md                           dataset card whose `configs` name both splits

`datasets.load_dataset("OUT")` gives a DatasetDict with `train` and `test` and PIL images.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nhr.exports.common import SPLITS, ExportError, ExportJob, image_cell, triplet_rows
from nhr.storage import FolderWriter, first_line

ROW_GROUP = 32  # rows of 1 MP images per row group: memory stays flat (as nhr/stages/export.py)


def image_metadata(*columns: str) -> dict[str, str]:
    """Schema metadata that makes `datasets` decode these struct columns as images."""
    features = {column: {"_type": "Image"} for column in columns}
    return {"huggingface": json.dumps({"info": {"features": features}})}


def write_splits(
    job: ExportJob,
    folder: FolderWriter,
    rows: Callable[[], Iterator[dict[str, Any]]],
    schema: pa.Schema,
    to_record: Callable[[dict[str, Any]], dict[str, Any]],
    also_count: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Write each split's rows as `data/<split>-NNNNN-of-NNNNN.parquet`, a row group at a
    time; returns the rows per split. `rows` is called once to count (each row also goes to
    `also_count`, for whatever else the caller counts) and once per split to write (the
    tables are read again rather than held)."""
    counts = dict.fromkeys(SPLITS, 0)
    for row in rows():
        counts[row["split"]] += 1
        if also_count is not None:
            also_count(row)
    for split in SPLITS:
        if not counts[split]:
            continue
        file_count = -(-counts[split] // job.rows_per_file)
        selected = (row for row in rows() if row["split"] == split)
        for index in range(file_count):
            name = f"data/{split}-{index:05d}-of-{file_count:05d}.parquet"
            chunk = itertools.islice(selected, job.rows_per_file)
            with folder.open_write(name) as handle, pq.ParquetWriter(handle, schema) as writer:
                while group := list(itertools.islice(chunk, ROW_GROUP)):
                    records = [to_record(row) for row in group]
                    writer.write_table(pa.Table.from_pylist(records, schema=schema))
    return counts


def card_header(counts: dict[str, int]) -> str:
    """The YAML header naming the split files, which `load_dataset(folder)` reads."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in SPLITS:
        if counts[split]:
            lines += [f"  - split: {split}", f"    path: data/{split}-*"]
    lines += ["tags:", "- image-editing", "- synthetic", "- nhr", "---"]
    return "\n".join(lines)


def split_table(counts: dict[str, int]) -> str:
    lines = ["| split | rows |", "|---|---:|"]
    lines += [f"| {split} | {counts[split]:,} |" for split in SPLITS if counts[split]]
    return "\n".join(lines)


def write_short_card(folder: FolderWriter, counts: dict[str, int], *paragraphs: str) -> None:
    """README.md of a format without the full dataset card: the split header, `paragraphs`
    and the rows per split."""
    card = "\n\n".join([card_header(counts), *paragraphs, split_table(counts)])
    folder.write_bytes("README.md", (card + "\n").encode("utf-8"))


# -- hf ------------------------------------------------------------------------------------------


def write_hf(job: ExportJob, folder: FolderWriter) -> dict[str, Any]:
    from nhr.stages.export import DATASET_SCHEMA

    def record(row: dict[str, Any]) -> dict[str, Any]:
        out = {name: row[name] for name in DATASET_SCHEMA.names}
        for column in ("source_image", "edited_image"):
            out[column] = image_cell(job.store, row[column])
        return out

    card_counts: dict[str, Counter[str]] = {name: Counter() for name in CARD_COUNTS}

    def count(row: dict[str, Any]) -> None:
        for column, counter in card_counts.items():
            counter[row[column]] += 1

    splits = write_splits(job, folder, lambda: triplet_rows(job), DATASET_SCHEMA, record, count)
    folder.write_bytes("README.md", hf_card(job, splits, card_counts).encode("utf-8"))
    return {"rows": splits}


CARD_COUNTS = ("kind", "category", "style")  # the columns the card counts rows by


def hf_card(job: ExportJob, splits: dict[str, int], counts: dict[str, Counter[str]]) -> str:
    """The full dataset card (nhr/exports/card.py) of an `hf` export: what is published with
    `--push-to-hub`; `counts`: rows per value of each of CARD_COUNTS."""
    from nhr.analysis.survival import survival_markdown, survival_table
    from nhr.config import parse_config
    from nhr.exports.card import dataset_card
    from nhr.run import collect_stats

    config = parse_config(job.store.read_config())
    table = survival_table(collect_stats(job.store, config))
    intro = (
        "The split is by source image: a source, its inverses and its composites are always "
        "in the same split."
    )
    if job.mini is not None:
        intro += f" This is a balanced subset of {job.mini:,} rows of the run's dataset."
    return dataset_card(
        splits={split: splits[split] for split in SPLITS},
        counts={name: dict(sorted(c.items())) for name, c in counts.items()},
        config=config,
        survival=survival_markdown(table) if table else None,
        load='import datasets\n\nds = datasets.load_dataset("path/to/this/folder")  # or the '
        "Hub repository id",
        intro=intro,
    )


def push_to_hub(output: str, repo: str, counts: dict[str, int], private: bool = False) -> None:
    """Upload the dataset folder at `output` (`data/<split>-*.parquet` and README.md) to the
    Hub dataset repository `repo` through the `datasets` library, which reads the token from
    `HF_TOKEN` or `huggingface-cli login`.

    The card goes up first: `push_to_hub` of `datasets` keeps the text and metadata of the
    repository's README and only adds its `dataset_info`, so the published card is nhr's."""
    try:
        import datasets
        import fsspec
        from huggingface_hub import HfApi
    except ImportError as error:
        raise ExportError(
            f"--push-to-hub needs the datasets library ({error}): pip install datasets"
        ) from None

    root = str(output).rstrip("/")
    data_files = {split: f"{root}/data/{split}-*.parquet" for split in SPLITS if counts.get(split)}
    if not data_files:
        raise ExportError(f"{root}: no rows to push")
    try:
        dataset = datasets.load_dataset("parquet", data_files=data_files)
        api = HfApi()
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        with fsspec.open(f"{root}/README.md", "rb") as card:  # a local folder or a URL
            api.upload_file(
                path_or_fileobj=card.read(),
                path_in_repo="README.md",
                repo_id=repo,
                repo_type="dataset",
                commit_message="Dataset card (nhr)",
            )
        dataset.push_to_hub(repo, private=private)
    except Exception as error:  # offline, no token, no access, a network error: the Hub's
        # libraries retry what can succeed; what reaches here is for the user to fix
        raise ExportError(
            f"pushing to the Hub dataset {repo} failed: {type(error).__name__}: "
            f"{first_line(error)} (the export at {root} is complete; run the command again "
            "to retry the upload)"
        ) from None


# -- ip2p ----------------------------------------------------------------------------------------

IP2P_SCHEMA = pa.schema(
    [
        pa.field("input_image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        pa.field("edit_prompt", pa.string()),
        pa.field("edited_image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        pa.field("sample_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("operation", pa.string()),
        pa.field("kind", pa.string()),
    ],
    metadata=image_metadata("input_image", "edited_image"),
)


def write_ip2p(job: ExportJob, folder: FolderWriter) -> dict[str, Any]:
    def record(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "input_image": image_cell(job.store, row["source_image"]),
            "edit_prompt": row["edit_instruction"],
            "edited_image": image_cell(job.store, row["edited_image"]),
            "sample_id": row["sample_id"],
            "category": row["category"],
            "operation": row["operation"],
            "kind": row["kind"],
        }

    counts = write_splits(job, folder, lambda: triplet_rows(job), IP2P_SCHEMA, record)
    write_short_card(
        folder,
        counts,
        "# Image-editing triplets for InstructPix2Pix training",
        "The columns are the defaults of diffusers' "
        "`examples/instruct_pix2pix/train_instruct_pix2pix.py`: `input_image`, "
        "`edit_prompt`, `edited_image`. Pass this folder as `--dataset_name`.",
    )
    return {"rows": counts}
