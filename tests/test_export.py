"""The exported dataset loads with Hugging Face `datasets` and round-trips the stage rows."""

import io

import pytest
from PIL import Image

from helpers import dataset_rows, table_rows
from nhr.config import parse_config
from nhr.pipeline import release_stage

datasets = pytest.importorskip("datasets")


def test_load_dataset_gives_pil_images_and_all_columns(mined, tmp_path, monkeypatch):
    run_dir, _ = mined
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    ds = datasets.load_dataset(
        "parquet", data_dir=str(run_dir / "dataset" / "data"), cache_dir=str(tmp_path / "cache")
    )["train"]
    required = {
        "sample_id",
        "source_image",
        "edited_image",
        "edit_instruction",
        "category",
        "kind",
        "style",
        "img_width",
        "img_height",
        "instruction_adherence",
        "aesthetics",
        "attempts",
        "parents",
        "generator_model",
        "editor_model",
        "validator_model",
    }
    assert required <= set(ds.column_names)
    first = ds[0]
    assert isinstance(first["source_image"], Image.Image)
    assert isinstance(first["edited_image"], Image.Image)
    assert first["source_image"].size == (first["img_width"], first["img_height"])
    assert first["edited_image"].size == first["source_image"].size


def test_export_round_trips_the_released_triplets(mined, small_config):
    run_dir, _ = mined
    release = release_stage(parse_config(small_config()))
    selected = {r["triplet_id"]: r for r in table_rows(run_dir, release) if r["status"] == "ok"}
    rows = dataset_rows(run_dir)
    assert {r["sample_id"] for r in rows} == set(selected)
    for row in rows:
        triplet = selected[row["sample_id"]]
        assert row["edit_instruction"] == triplet["instruction"]
        assert row["instruction_adherence"] == triplet["adherence"]
        source_path = (
            run_dir / "images" / triplet["source_image"][:2] / f"{triplet['source_image']}.png"
        )
        assert row["source_image"]["bytes"] == source_path.read_bytes()
        assert Image.open(io.BytesIO(row["edited_image"]["bytes"])).size == (
            row["img_width"],
            row["img_height"],
        )
