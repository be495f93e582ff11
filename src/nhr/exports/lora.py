"""Folder layouts of the common LoRA trainers for instruction editors: `kontext-lora` (FLUX.1
Kontext-dev) and `qwen-edit-lora` (Qwen-Image-Edit). Both write the same files; they differ in
the trainer configs beside them.

    OUT/train/target/<id>.png    the edited image: what the LoRA learns to produce
    OUT/train/target/<id>.txt    its caption: the edit instruction
    OUT/train/control/<id>.png   the source image, with the same file name
    OUT/train/metadata.jsonl     {"image_path", "control_path", "caption"} per sample,
                                 paths relative to OUT (train/target/<id>.png)
    OUT/train/metadata.csv       image,prompt,<control column> per sample
    OUT/test/...                 the same for the test split
    OUT/ai-toolkit.yaml          dataset blocks for ostris ai-toolkit
    OUT/musubi.toml              dataset config for kohya-ss musubi-tuner
    OUT/README.md                which trainer reads what

Readers: ostris ai-toolkit (`folder_path` = target images with same-stem `.txt` captions,
`control_path` = source images with the same file names); kohya-ss musubi-tuner (directory
form `image_directory` + `control_directory`, or the JSONL form); DiffSynth-Studio
(`--dataset_metadata_path metadata.csv`, control column `kontext_images` for Kontext and
`edit_image` for Qwen-Image-Edit). Paths in metadata.csv are relative to its split folder,
those in metadata.jsonl to OUT.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from nhr.exports.common import SPLITS, ExportJob, count_by, image_bytes, triplet_rows
from nhr.storage import FolderWriter

# format -> (DiffSynth-Studio's column of the source image, ai-toolkit arch, model name)
TRAINERS = {
    "kontext-lora": ("kontext_images", "flux_kontext", "black-forest-labs/FLUX.1-Kontext-dev"),
    "qwen-edit-lora": ("edit_image", "qwen_image_edit", "Qwen/Qwen-Image-Edit"),
}


def write_lora_folders(job: ExportJob, folder: FolderWriter, fmt: str) -> dict[str, Any]:
    control_column = TRAINERS[fmt][0]
    found = count_by(triplet_rows(job), "split")
    counts = {split: found.get(split, 0) for split in SPLITS}
    for split in SPLITS:
        if not counts[split]:
            continue
        # the index files are streamed beside the images: memory stays flat
        with ExitStack() as files:
            jsonl = files.enter_context(_text(folder, f"{split}/metadata.jsonl"))
            table = csv.writer(
                files.enter_context(_text(folder, f"{split}/metadata.csv")), lineterminator="\n"
            )
            table.writerow(["image", "prompt", control_column])
            for row in triplet_rows(job):
                if row["split"] != split:
                    continue
                stem = row["sample_id"]
                target, control = f"target/{stem}.png", f"control/{stem}.png"
                caption = " ".join(row["edit_instruction"].split())  # one line per caption
                edited = image_bytes(job.store, row["edited_image"])
                folder.write_bytes(f"{split}/{target}", edited)
                folder.write_bytes(f"{split}/target/{stem}.txt", caption.encode("utf-8"))
                source = image_bytes(job.store, row["source_image"])
                folder.write_bytes(f"{split}/{control}", source)
                # musubi-tuner opens these paths as written: relative to the export folder,
                # the folder musubi.toml is run from (the CSV's are relative to its split)
                record = {
                    "image_path": f"{split}/{target}",
                    "control_path": f"{split}/{control}",
                    "caption": caption,
                }
                jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
                table.writerow([target, caption, control])
    splits = [split for split in SPLITS if counts[split]]
    folder.write_bytes("ai-toolkit.yaml", ai_toolkit_config(fmt, splits).encode("utf-8"))
    folder.write_bytes("musubi.toml", musubi_config(splits).encode("utf-8"))
    folder.write_bytes("README.md", readme(fmt, counts).encode("utf-8"))
    return {"rows": counts}


@contextmanager
def _text(folder: FolderWriter, name: str) -> Iterator[io.TextIOWrapper]:
    with folder.open_write(name) as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        try:
            yield text
        finally:
            text.flush()
            text.detach()  # the binary file is closed (and committed) by open_write


def ai_toolkit_config(fmt: str, splits: list[str]) -> str:
    """The parts of an ai-toolkit job config that point at this export; paths are relative to
    the export folder (make them absolute, or run the trainer from here)."""
    _, arch, model = TRAINERS[fmt]
    train = "train" if "train" in splits else splits[0] if splits else "train"
    return (
        "# Paste into an ai-toolkit job config (config.process[0]); see the trainer's\n"
        f"# example for {arch}. Paths are relative to this folder.\n"
        "datasets:\n"
        f'  - folder_path: "{train}/target"\n'
        f'    control_path: "{train}/control"\n'
        '    caption_ext: "txt"\n'
        "    caption_dropout_rate: 0.05\n"
        "    resolution: [512, 768, 1024]\n"
        "model:\n"
        f'  name_or_path: "{model}"\n'
        f'  arch: "{arch}"\n'
    )


def musubi_config(splits: list[str]) -> str:
    """A musubi-tuner dataset config (directory form); each dataset needs its own cache."""
    train = "train" if "train" in splits else splits[0] if splits else "train"
    return (
        "# musubi-tuner dataset config; paths are relative to this folder.\n"
        "[general]\n"
        "resolution = [1024, 1024]\n"
        'caption_extension = ".txt"\n'
        "batch_size = 1\n"
        "enable_bucket = true\n"
        "bucket_no_upscale = false\n"
        "\n"
        "[[datasets]]\n"
        f'image_directory = "{train}/target"\n'
        f'control_directory = "{train}/control"\n'
        "# the latent cache lives in this folder: a new export (other images) starts a new one\n"
        f'cache_directory = "{train}/cache"\n'
    )


def readme(fmt: str, counts: dict[str, int]) -> str:
    control_column, arch, model = TRAINERS[fmt]
    lines = [
        f"# Image-editing triplets for {model} LoRA training",
        "",
        "Per split folder: `target/<id>.png` (edited image) with `target/<id>.txt` (the "
        "instruction), `control/<id>.png` (source image, same file name), `metadata.jsonl` "
        "and `metadata.csv`. Splits are by source image.",
        "",
        "| split | samples |",
        "|---|---:|",
    ]
    lines += [f"| {split} | {counts[split]:,} |" for split in SPLITS if counts[split]]
    lines += [
        "",
        f"- ostris ai-toolkit (`arch: {arch}`): `ai-toolkit.yaml` has the dataset block "
        "(`folder_path` = target, `control_path` = control).",
        "- kohya-ss musubi-tuner: `musubi.toml` (directory form), or `image_jsonl_file` = "
        "`train/metadata.jsonl` with a `cache_directory`.",
        "- DiffSynth-Studio: `--dataset_base_path train --dataset_metadata_path "
        f'train/metadata.csv --data_file_keys "image,{control_column}" --extra_inputs '
        f'"{control_column}"`.',
    ]
    return "\n".join(lines) + "\n"
