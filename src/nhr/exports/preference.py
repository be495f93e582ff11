"""Preference pairs for DPO-style training of an editor: for each (source image, instruction)
that the select stage kept a candidate for, that candidate (`chosen`) against each candidate
of the same pair that the validator scored and rejected (`rejected`), with both scores.

    OUT/data/train-00000-of-00001.parquet   images embedded; `datasets` decodes them to PIL
    OUT/data/test-00000-of-00001.parquet
    OUT/README.md

Read from the `edit`, `validate` and `select` tables: a rejected candidate is one whose
validator row is `dropped` (scores below the threshold); candidates the prefilter removed or
the validator failed to score have no scores and are left out. `margin` is the difference of
the two geometric-mean scores (the select stage's ranking score), always > 0: a rejected
candidate whose mean is not below the chosen one's (it failed one threshold by a little and
beat the chosen one on the other score) is left out, since the validator's own scores do not
say which of the two is better and a DPO trainer would learn the pair either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from nhr.exports.common import ExportJob, image_cell, split_of
from nhr.exports.parquet import image_metadata, write_short_card, write_splits
from nhr.ids import stable_id
from nhr.records import DROPPED, OK
from nhr.stages.select import geometric_mean
from nhr.storage import FolderWriter

_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string()),
        pa.field("source_image", _IMAGE),
        pa.field("instruction", pa.string()),
        pa.field("chosen", _IMAGE),
        pa.field("rejected", _IMAGE),
        pa.field("chosen_adherence", pa.float64()),
        pa.field("chosen_aesthetics", pa.float64()),
        pa.field("chosen_score", pa.float64()),
        pa.field("rejected_adherence", pa.float64()),
        pa.field("rejected_aesthetics", pa.float64()),
        pa.field("rejected_score", pa.float64()),
        pa.field("margin", pa.float64()),
        pa.field("rejected_reason", pa.string()),
        pa.field("category", pa.string()),
        pa.field("operation", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("chosen_id", pa.string()),
        pa.field("rejected_id", pa.string()),
        pa.field("editor_model", pa.string()),
        pa.field("validator_model", pa.string()),
    ],
    metadata=image_metadata("source_image", "chosen", "rejected"),
)


def _model_name(model_json: str | None) -> str | None:
    if not model_json:
        return None
    info = json.loads(model_json)
    return f"{info['backend']}:{info['model']}"


def shard_pairs(job: ExportJob, shard: int) -> list[dict[str, Any]]:
    """The preference pairs of one shard (image digests, not bytes), ordered by id."""
    store = job.store
    candidates = store.read_rows("edit", shard)
    scores = {v["candidate_id"]: v for v in store.read_rows("validate", shard)}
    members: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for candidate in candidates:
        members.setdefault((candidate["source_id"], candidate["edit_id"]), []).append(candidate)
    by_id = {c["candidate_id"]: c for c in candidates}
    pairs = []
    for selected in store.read_rows("select", shard):
        if selected["status"] != OK:
            continue
        chosen = by_id[selected["candidate_id"]]
        chosen_scores = scores[chosen["candidate_id"]]
        chosen_score = geometric_mean(chosen_scores["adherence"], chosen_scores["aesthetics"])
        for other in members[(selected["source_id"], selected["edit_id"])]:
            verdict = scores.get(other["candidate_id"])
            if verdict is None or verdict["status"] != DROPPED or verdict["adherence"] is None:
                continue
            score = geometric_mean(verdict["adherence"], verdict["aesthetics"])
            if score >= chosen_score:
                continue  # the scores disagree with the verdict: no clear preference
            pairs.append(
                {
                    "pair_id": stable_id(
                        "preference", chosen["candidate_id"], other["candidate_id"]
                    ),
                    "source_image": chosen["source_image"],
                    "instruction": selected["instruction"],
                    "chosen": chosen["edited_image"],
                    "rejected": other["edited_image"],
                    "chosen_adherence": chosen_scores["adherence"],
                    "chosen_aesthetics": chosen_scores["aesthetics"],
                    "chosen_score": chosen_score,
                    "rejected_adherence": verdict["adherence"],
                    "rejected_aesthetics": verdict["aesthetics"],
                    "rejected_score": score,
                    "margin": chosen_score - score,
                    "rejected_reason": verdict["reason"],
                    "category": selected["category"],
                    "operation": selected["operation"],
                    "source_id": selected["source_id"],
                    "chosen_id": chosen["candidate_id"],
                    "rejected_id": other["candidate_id"],
                    "editor_model": _model_name(other.get("model")),
                    "validator_model": _model_name(verdict.get("model")),
                }
            )
    return sorted(pairs, key=lambda pair: pair["pair_id"])


def preference_rows(job: ExportJob) -> Iterator[dict[str, Any]]:
    for shard in job.shards:
        for pair in shard_pairs(job, shard):
            if job.keep is not None and pair["pair_id"] not in job.keep:
                continue
            pair["split"] = split_of(pair["source_id"], job.split_test, job.seed)
            yield pair


def write_preference(job: ExportJob, folder: FolderWriter) -> dict[str, Any]:
    def record(pair: dict[str, Any]) -> dict[str, Any]:
        out = {name: pair[name] for name in PREFERENCE_SCHEMA.names}
        for column in ("source_image", "chosen", "rejected"):
            out[column] = image_cell(job.store, pair[column])
        return out

    counts = write_splits(job, folder, lambda: preference_rows(job), PREFERENCE_SCHEMA, record)
    write_short_card(
        folder,
        counts,
        "# Edit preference pairs mined with nhr",
        "Each row: a source image and an instruction, the candidate edit the validator "
        "accepted and ranked best (`chosen`) and a candidate it rejected (`rejected`), with "
        "both validator scores (1-5) and `margin`, the difference of their geometric means. "
        "Splits are by source image.",
    )
    return {"rows": counts}
