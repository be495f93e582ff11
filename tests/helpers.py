"""Readers shared by the tests: stage tables and the exported dataset of a run directory."""

import pyarrow.parquet as pq


def table_rows(run_dir, stage):
    files = sorted((run_dir / "stages" / stage).glob("shard-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def dataset_rows(run_dir):
    files = sorted((run_dir / "dataset" / "data").glob("train-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def signature(run_dir):
    """What must be identical between two runs: ids, image bytes and instructions, in order."""
    return [
        (
            r["sample_id"],
            r["source_image"]["bytes"],
            r["edited_image"]["bytes"],
            r["edit_instruction"],
        )
        for r in dataset_rows(run_dir)
    ]
