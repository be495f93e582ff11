"""Row types of every stage table, as Arrow schemas.

Rows travel as plain dicts (cheap to build, easy to ship between processes); the schema fixes
their column types on disk so empty shards and all-null columns stay well typed. Every table
keeps all the rows it was given, with `status` ("ok", "dropped" or "failed") and a `reason`,
so rejected candidates keep their scores and why they were rejected.
"""

from __future__ import annotations

import pyarrow as pa

OK = "ok"
DROPPED = "dropped"
FAILED = "failed"

_STATUS = [pa.field("status", pa.string()), pa.field("reason", pa.string())]
# Where a photo source came from: the folder or dataset (sources.path), the file in it or the
# dataset row, and the licence the dataset gives for it.
_PROVENANCE = [
    pa.field("origin", pa.string()),
    pa.field("origin_file", pa.string()),
    pa.field("origin_row", pa.int64()),
    pa.field("license", pa.string()),
]

EDIT = pa.struct(
    [
        pa.field("edit_id", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("operation", pa.string()),
        pa.field("composite", pa.bool_()),
    ]
)

PROMPT = pa.schema(
    [
        pa.field("prompt_id", pa.string()),
        pa.field("prompt_index", pa.int64()),
        pa.field("prompt", pa.string()),
        pa.field("operation", pa.string()),
        pa.field("style", pa.string()),
        pa.field("edits", pa.list_(EDIT)),
        pa.field("design_batch", pa.int64()),
        pa.field("model", pa.string()),
        # photo sources (sources.kind: images; null for generated ones): the normalised photo,
        # or why the drawn file gave none, and where it came from
        pa.field("source_image", pa.string()),
        pa.field("source_reason", pa.string()),
        pa.field("describer_model", pa.string()),  # who wrote `prompt` (the description)
        *_PROVENANCE,
    ]
)

SOURCE = pa.schema(
    [
        pa.field("source_id", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("seed_index", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("image", pa.string()),
        *_STATUS,
        pa.field("model", pa.string()),
        *_PROVENANCE,
    ]
)

GATE = pa.schema(
    [
        pa.field("source_id", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("answer", pa.string()),
        *_STATUS,
        pa.field("model", pa.string()),
        # plausibility.samples > 1: the K answers (`answer` is the one that decided); else null
        pa.field("answers", pa.list_(pa.string())),
    ]
)

JOB = pa.schema(
    [
        pa.field("job_id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("edit_id", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("operation", pa.string()),
        pa.field("composite", pa.bool_()),
        pa.field("seed_index", pa.int64()),
        pa.field("editor_seed", pa.int64()),
        pa.field("priority", pa.float64()),
        pa.field("cost", pa.float64()),
        *_STATUS,
    ]
)

CANDIDATE = pa.schema(
    [
        pa.field("candidate_id", pa.string()),
        pa.field("job_id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("edit_id", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("operation", pa.string()),
        pa.field("composite", pa.bool_()),
        pa.field("editor_seed", pa.int64()),
        pa.field("source_image", pa.string()),
        pa.field("edited_image", pa.string()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        *_STATUS,
        pa.field("model", pa.string()),
    ]
)

PREFILTER = pa.schema(
    [
        pa.field("candidate_id", pa.string()),
        pa.field("changed_share", pa.float64()),
        pa.field("largest_component_share", pa.float64()),
        pa.field("adherence", pa.float64()),
        pa.field("aesthetics", pa.float64()),
        pa.field("no_unwanted_changes", pa.bool_()),
        pa.field("pleasing", pa.bool_()),
        *_STATUS,
        pa.field("model", pa.string()),
    ]
)

VALIDATION = pa.schema(
    [
        pa.field("candidate_id", pa.string()),
        pa.field("adherence", pa.float64()),
        pa.field("aesthetics", pa.float64()),
        *_STATUS,
        pa.field("model", pa.string()),
        # quality levers (null when off): the K readings of validate.samples (adherence and
        # aesthetics above aggregate them), and validate.second_judge's scores and model
        pa.field("adherence_samples", pa.list_(pa.float64())),
        pa.field("aesthetics_samples", pa.list_(pa.float64())),
        pa.field("second_adherence", pa.float64()),
        pa.field("second_aesthetics", pa.float64()),
        pa.field("second_adherence_samples", pa.list_(pa.float64())),
        pa.field("second_aesthetics_samples", pa.list_(pa.float64())),
        pa.field("second_model", pa.string()),
    ]
)

TRIPLET = pa.schema(
    [
        pa.field("triplet_id", pa.string()),
        pa.field("kind", pa.string()),  # forward | inverse | composite
        pa.field("prompt_id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("edit_id", pa.string()),
        pa.field("candidate_id", pa.string()),
        pa.field("source_image", pa.string()),
        pa.field("edited_image", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("operation", pa.string()),
        pa.field("category", pa.string()),
        pa.field("composite", pa.bool_()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("adherence", pa.float64()),
        pa.field("aesthetics", pa.float64()),
        pa.field("score", pa.float64()),
        pa.field("attempts", pa.int64()),
        pa.field("passes", pa.int64()),
        pa.field("parents", pa.list_(pa.string())),
        *_STATUS,
    ]
)
