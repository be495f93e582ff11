"""Photo sources (nhr/sources.py): listing a folder or dataset, the seeded draw, and the
normalisation that rejects bad files with a reason instead of crashing."""

import io
import json
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nhr.backends.sim.photos import photo_png, write_bad_files, write_photo_folder
from nhr.backends.sim.render import read_meta
from nhr.sources import SourceError, draw, normalise, open_source

BUCKETS = [(64, 48), (48, 64), (56, 56)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos")
    write_photo_folder(path, 4, long_side=120)
    return path, write_bad_files(path, long_side=120)


def decoded(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def test_every_bad_file_gets_its_reason_and_the_rest_become_rgb_buckets(folder):
    path, expected = folder
    listing = open_source(str(path))
    entries = listing.read(list(range(listing.count)))
    assert {e.file for e in entries} == set(expected) | {f"photo-{i:05d}.png" for i in range(4)}
    for entry in entries:  # notes.txt is not an image file: never listed
        result = normalise(entry.data, BUCKETS, min_side=32)
        want = expected.get(entry.file)
        if want is not None:
            assert result == want, entry.file
            continue
        assert not isinstance(result, str), (entry.file, result)
        image = decoded(result.png)
        assert image.mode == "RGB" and image.size in BUCKETS
        assert (result.width, result.height) == image.size
        assert (read_meta(result.png) is None) == (entry.file == "cmyk.jpg"), entry.file


def test_exif_orientation_is_applied_before_the_bucket_is_chosen(folder):
    path, _ = folder
    rotated = (path / "rotated.png").read_bytes()
    stored = decoded(rotated)
    assert stored.height > stored.width  # stored sideways, shown landscape
    upright = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    buffer = io.BytesIO()
    upright.save(buffer, format="PNG")
    expected = normalise(buffer.getvalue(), BUCKETS, 32)
    result = normalise(rotated, BUCKETS, 32)
    assert result.original_size == upright.size and result.width > result.height
    assert np.array_equal(np.asarray(decoded(result.png)), np.asarray(decoded(expected.png)))


def test_transparency_is_composited_on_white_and_cmyk_converted(folder):
    path, _ = folder
    rgba = decoded((path / "rgba.png").read_bytes())
    flat = decoded(normalise((path / "rgba.png").read_bytes(), [rgba.size], 32).png)
    # alpha 200 of 255 over white: every channel moves towards 255
    assert (np.asarray(flat, dtype=int) >= np.asarray(rgba.convert("RGB"), dtype=int) - 1).all()
    assert normalise((path / "cmyk.jpg").read_bytes(), BUCKETS, 32).original_mode == "CMYK"


def test_the_size_rules_are_settings():
    png = photo_png(0, 1, long_side=120)
    assert normalise(png, BUCKETS, min_side=200) == "too_small"
    assert normalise(png, BUCKETS, min_side=32, max_pixels=120 * 60) == "oversized_image"
    assert normalise(None, BUCKETS, 32) == "missing_image"


def test_the_draw_is_seeded_and_a_larger_sample_keeps_the_smaller(folder):
    listing = open_source(str(folder[0]))
    everything = draw(listing, 0, None)
    assert sorted(everything) == list(range(listing.count))
    assert draw(listing, 0, 5) == everything[:5] == draw(listing, 0, 5)
    assert draw(listing, 1, None) != everything


def test_parquet_and_imagefolder_carry_row_and_licence(tmp_path):
    images = [photo_png(0, i, long_side=100) for i in range(3)]
    table = pa.table(
        {
            "image": [{"bytes": data, "path": f"{i}.png"} for i, data in enumerate(images)],
            "license": ["cc-by-4.0", None, "cc0-1.0"],
        }
    )
    pq.write_table(table, tmp_path / "photos.parquet")
    listing = open_source(str(tmp_path / "photos.parquet"))
    entries = listing.read([2, 0])
    assert [(e.row, e.license, e.data) for e in entries] == [
        (2, "cc0-1.0", images[2]),
        (0, "cc-by-4.0", images[0]),
    ]
    with pytest.raises(SourceError, match="no column 'picture'.*sources.column"):
        open_source(str(tmp_path / "photos.parquet"), column="picture")

    folder = tmp_path / "imagefolder"
    folder.mkdir()
    (folder / "a.png").write_bytes(images[0])
    rows = [{"file_name": "a.png", "license": "mit"}, {"file_name": "gone.png"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    listing = open_source(str(folder))
    first, missing = listing.read([0, 1])
    assert (first.file, first.row, first.license, first.data) == ("a.png", 0, "mit", images[0])
    assert missing.reason == "unreadable_file" and missing.row == 1


def test_a_hub_dataset_is_read_by_row(monkeypatch):
    """The hub path with a stand-in for `datasets` (tests run offline)."""
    images = [photo_png(0, i, long_side=100) for i in range(2)]

    class Table:
        column_names = ["image", "license"]
        features = {"image": None}

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return {"image": {"bytes": images[index], "path": None}, "license": "odc-by"}

    fake = types.SimpleNamespace(load_dataset=lambda name, split: Table())
    monkeypatch.setitem(sys.modules, "datasets", fake)
    listing = open_source("someone/photos:validation")
    assert listing.count == 2 and listing.key(1) == "row 1"
    assert listing.read([1])[0].data == images[1]


def test_unusable_sources_are_config_errors(tmp_path):
    with pytest.raises(SourceError, match="no such folder"):
        open_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(tmp_path / "empty"))
