"""Stage 12, export: the released triplets as a Hugging Face parquet dataset.

    RUN/dataset/data/train-00000-of-00002.parquet   images embedded as {bytes, path}
    RUN/dataset/README.md                            dataset card with counts

The image columns carry the `datasets` feature metadata, so
`datasets.load_dataset("parquet", data_dir="RUN/dataset/data")` returns PIL images. On local
disk the dataset is written to a temporary folder and moved into place, so a reader never sees
half an export; on object storage each file appears whole and the export marker, written
after, is the commit (nhr/storage.py). Rows are ordered by shard and then by triplet id: the same run gives the same files.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nhr.records import OK
from nhr.store import DamagedImageError, RunStore

ROW_GROUP = 32

_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

DATASET_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string()),
        pa.field("source_image", _IMAGE),
        pa.field("edited_image", _IMAGE),
        pa.field("edit_instruction", pa.string()),
        pa.field("category", pa.string()),
        pa.field("operation", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("composite", pa.bool_()),
        pa.field("style", pa.string()),
        pa.field("img_width", pa.int64()),
        pa.field("img_height", pa.int64()),
        pa.field("instruction_adherence", pa.float64()),
        pa.field("aesthetics", pa.float64()),
        pa.field("attempts", pa.int64()),
        pa.field("passes", pa.int64()),
        pa.field("parents", pa.list_(pa.string())),
        pa.field("prompt", pa.string()),
        pa.field("source_seed", pa.int64()),
        pa.field("editor_seed", pa.int64()),
        pa.field("generator_model", pa.string()),
        pa.field("editor_model", pa.string()),
        pa.field("validator_model", pa.string()),
        # where a photo source came from (sources.kind: images; null for generated sources):
        # the folder or dataset, the file in it or its row, and the licence the dataset gives
        pa.field("source_origin", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("source_license", pa.string()),
    ],
    metadata={
        "huggingface": json.dumps(
            {
                "info": {
                    "features": {
                        "source_image": {"_type": "Image"},
                        "edited_image": {"_type": "Image"},
                    }
                }
            }
        )
    },
)


def _model_name(model_json: str | None) -> str | None:
    if not model_json:
        return None
    info = json.loads(model_json)
    return f"{info['backend']}:{info['model']}"


def _provenance(source: dict[str, Any]) -> dict[str, Any]:
    """The export columns saying where a source came from (tables of older runs lack them)."""
    return {
        "source_origin": source.get("origin"),
        "source_file": source.get("origin_file"),
        "source_row": source.get("origin_row"),
        "source_license": source.get("license"),
    }


def shard_rows(store: RunStore, shard: int, release: str) -> list[dict[str, Any]]:
    """The dataset rows (without image bytes) of one shard; `release` names the stage whose
    triplet table is the released set."""
    prompts = {p["prompt_id"]: p for p in store.read_rows("design", shard)}
    sources = {s["source_id"]: s for s in store.read_rows("generate", shard)}
    candidates = {c["candidate_id"]: c for c in store.read_rows("edit", shard)}
    validations = {v["candidate_id"]: v for v in store.read_rows("validate", shard)}
    triplets = store.read_rows(release, shard)
    rows = []
    for triplet in sorted(
        (t for t in triplets if t["status"] == OK), key=lambda t: t["triplet_id"]
    ):
        prompt = prompts[triplet["prompt_id"]]
        # inverse and composite triplets carry the candidate id of the forward edit whose
        # images they reuse (for composites: the second edit)
        candidate = candidates.get(triplet["candidate_id"] or "", {})
        rows.append(
            {
                "sample_id": triplet["triplet_id"],
                "source_image": triplet["source_image"],
                "edited_image": triplet["edited_image"],
                "edit_instruction": triplet["instruction"],
                "category": triplet["category"],
                "operation": triplet["operation"],
                "kind": triplet["kind"],
                "composite": triplet["composite"],
                "style": prompt["style"],
                "img_width": triplet["width"],
                "img_height": triplet["height"],
                "instruction_adherence": triplet["adherence"],
                "aesthetics": triplet["aesthetics"],
                "attempts": triplet["attempts"],
                "passes": triplet["passes"],
                "parents": triplet["parents"],
                "prompt": prompt["prompt"],
                "source_seed": sources[triplet["source_id"]]["seed"],
                "editor_seed": candidate.get("editor_seed"),
                "generator_model": _model_name(sources[triplet["source_id"]]["model"]),
                "editor_model": _model_name(candidate.get("model")),
                "validator_model": _model_name(
                    validations.get(triplet["candidate_id"] or "", {}).get("model")
                ),
                **_provenance(sources[triplet["source_id"]]),
            }
        )
    return rows


def checked_image(store: RunStore, digest: str) -> bytes:
    """An image's bytes for release: `images.get` checks them against the image's name, and a
    PNG's structure and chunk checksums are checked here, so no truncated or damaged image is
    ever released (`nhr verify` also decodes every pixel; too slow to do here at 1 MP)."""
    from nhr.verify import decode_problem

    data = store.images.get(digest)
    problem = decode_problem(data, full=False)
    if problem is not None:
        raise DamagedImageError(
            store.images.where(digest),
            f"image does not decode ({problem})",
            "delete it and run `nhr mine` again to redo the shard that made it",
        )
    return data


def _with_image_bytes(store: RunStore, row: dict[str, Any]) -> dict[str, Any]:
    """The row with its images embedded, each checked (`checked_image`)."""
    row = dict(row)
    for column in ("source_image", "edited_image"):
        digest = row[column]
        row[column] = {"bytes": checked_image(store, digest), "path": f"{digest}.png"}
    return row


def write_dataset(
    store: RunStore, shards: list[int], release: str, rows_per_file: int
) -> dict[str, Any]:
    """Write RUN/dataset; returns the summary stored in the export marker.

    Two passes over the shards, so memory stays flat however large the run: the first counts
    the released rows (the number of files goes into each file's name), the second streams
    them, a row group of images at a time."""
    total = sum(
        sum(1 for t in store.read_rows(release, shard) if t["status"] == OK) for shard in shards
    )
    file_count = max(1, -(-total // rows_per_file))
    counts: dict[str, Counter[str]] = {"kind": Counter(), "category": Counter(), "style": Counter()}
    rows = (row for shard in shards for row in shard_rows(store, shard, release))
    written = 0
    with store.storage.replace_folder("dataset") as folder:
        for index in range(file_count):
            name = f"data/train-{index:05d}-of-{file_count:05d}.parquet"
            chunk = itertools.islice(rows, rows_per_file)
            with (
                folder.open_write(name) as handle,
                pq.ParquetWriter(handle, DATASET_SCHEMA) as writer,
            ):
                # Row groups of a few dozen rows keep memory flat with 1 MP images.
                while group := list(itertools.islice(chunk, ROW_GROUP)):
                    for row in group:
                        for column, counter in counts.items():
                            counter[row[column]] += 1
                    written += len(group)
                    group = [_with_image_bytes(store, row) for row in group]
                    writer.write_table(pa.Table.from_pylist(group, schema=DATASET_SCHEMA))
        if written != total:  # the tables changed between the passes: another writer
            raise RuntimeError(f"{store.where('dataset')}: {total} rows counted, {written} written")
        summary = summarize(written, counts)
        folder.write_bytes("README.md", run_card(store, summary).encode("utf-8"))
    return summary


def summarize(rows: int, counts: dict[str, Counter[str]]) -> dict[str, Any]:
    return {
        "rows": rows,
        "by_kind": dict(sorted(counts["kind"].items())),
        "by_category": dict(sorted(counts["category"].items())),
        "by_style": dict(sorted(counts["style"].items())),
    }


def run_card(store: RunStore, summary: dict[str, Any]) -> str:
    """The dataset card of RUN/dataset: the run's config and survival table, these counts."""
    from nhr.analysis.survival import survival_markdown, survival_table
    from nhr.config import parse_config
    from nhr.exports.card import dataset_card
    from nhr.run import collect_stats

    config = parse_config(store.read_config())
    # the export marker is written after the card: give the table the released count now
    stats = {**collect_stats(store, config), "dataset": {"rows": summary["rows"]}}
    table = survival_table(stats)
    return dataset_card(
        splits={"train": summary["rows"]},
        counts={
            "kind": summary["by_kind"],
            "category": summary["by_category"],
            "style": summary["by_style"],
        },
        config=config,
        survival=survival_markdown(table) if table else None,
        load='import datasets\n\nds = datasets.load_dataset("path/to/this/folder")["train"]\n'
        "# or, from a run directory:\n"
        '# datasets.load_dataset("parquet", data_dir="RUN/dataset/data")["train"]',
    )
