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


@pytest.mark.parametrize("damage", ["truncated release table", "deleted image"])
def test_export_of_a_damaged_run_keeps_the_old_dataset(mined, tmp_path, small_config, damage):
    """`nhr export` fails with one line naming the file, before touching anything: the
    completion marker and the dataset of the last export stay (it used to remove the marker
    first, so `nhr mine` failed afterwards too)."""
    import shutil
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    release = release_stage(parse_config(small_config()))
    if damage == "truncated release table":
        path = run_dir / "stages" / release / "shard-00001.parquet"
        path.write_bytes(path.read_bytes()[:300])
    else:
        digest = next(r for r in table_rows(run_dir, release) if r["status"] == "ok")[
            "edited_image"
        ]
        path = run_dir / "images" / digest[:2] / f"{digest}.png"
        path.unlink()
    marker = (run_dir / "stages" / "export" / "_SUCCESS.json").read_bytes()
    before = dataset_rows(run_dir)
    done = subprocess.run(
        [sys.executable, "-m", "nhr.cli", "export", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"nhr: error: {path}: ")
    assert (run_dir / "stages" / "export" / "_SUCCESS.json").read_bytes() == marker
    assert dataset_rows(run_dir) == before


def test_a_full_disk_during_export_keeps_the_old_dataset(mined, tmp_path, monkeypatch, capsys):
    import errno
    import shutil

    import nhr.stages.export as export
    from nhr.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    before = dataset_rows(run_dir)

    class FullDiskWriter(export.pq.ParquetWriter):
        def write_table(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")  # as pyarrow: no file name

    monkeypatch.setattr(export.pq, "ParquetWriter", FullDiskWriter)
    assert main(["export", str(run_dir)]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"nhr: error: {run_dir / 'dataset'}: No space left on device — free some disk space, "
        "then run the same command again to resume\n"
    )
    assert dataset_rows(run_dir) == before
    assert not list(run_dir.glob(".dataset-*"))


def test_a_killed_write_leaves_no_staging_folder_once_the_target_is_written_again(tmp_path):
    """A kill during an export leaves its staging folder; writing the same target again
    removes it, and leaves another target's (maybe being written now) alone."""
    from nhr.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    (tmp_path / ".dataset-out-killed").mkdir()  # left by a killed write of `out`
    (tmp_path / ".dataset-other-live").mkdir()  # another target's, being written
    with storage.replace_folder("out") as folder:
        folder.write_bytes("a.txt", b"new")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.glob(".dataset-*")) == [".dataset-other-live"]


def test_a_target_that_cannot_be_replaced_stays_as_it_was(tmp_path, monkeypatch):
    from pathlib import Path

    from nhr.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    with storage.replace_folder("out") as folder:
        folder.write_bytes("a.txt", b"old")
    real_rename = Path.rename

    def failing(self, target):
        if self.name.startswith(".dataset-out-"):  # the new folder cannot take its place
            raise PermissionError(13, "Permission denied", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(PermissionError):
        with storage.replace_folder("out") as folder:
            folder.write_bytes("a.txt", b"new")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"old"
    assert not list(tmp_path.glob(".dataset-*"))
