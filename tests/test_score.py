"""`nhr score`: a judge scores samples of editing datasets in the layouts of public ones.

The datasets are built here from a small simulator run (so the simulated judge has real edits
to read), in three public layouts: InstructPix2Pix's hub dataset (Parquet: original_image,
edit_prompt, edited_image), MagicBrush's (Parquet: source_img, instruction, target_img, plus
img_id, turn_index and mask_img) and an imagefolder (metadata.jsonl naming the image files,
HQ-Edit's column names), and a WebDataset tar. Bad images are mixed in.
"""

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from nhr.cli import main
from nhr.score import check_image, parse_columns, read_sample, score_datasets
from nhr.store import ImageStore

JUDGE = "configs/quickstart.yaml"


def png(size=(16, 16), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb() -> bytes:
    """A tiny PNG whose header claims 60000 x 60000 pixels (a decompression bomb)."""
    data = bytearray(png((1, 1)))
    header = b"IHDR" + struct.pack(">II", 60000, 60000) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


BAD = {
    "corrupt_image": b"this is not an image at all",
    "truncated_image": None,  # filled in below (needs a real image)
    "oversized_image": bomb(),
    "non_rgb_image": png(mode="L"),
}


@pytest.fixture(scope="module")
def triplets(mined):
    """(source bytes, edited bytes, instruction) of the run's edited candidates."""
    run_dir, _ = mined
    images = ImageStore(run_dir / "images")
    from helpers import table_rows

    rows = [r for r in table_rows(run_dir, "edit") if r["status"] == "ok"][:30]
    return [
        (images.get(r["source_image"]), images.get(r["edited_image"]), r["instruction"])
        for r in rows
    ]


def with_bad(triplets):
    """The triplets plus one bad edited image per reason, and one without instruction."""
    source, edited, instruction = triplets[0]
    bad = dict(BAD, truncated_image=edited[: len(edited) // 2])
    out = list(triplets)
    out += [(source, data, instruction) for data in bad.values()]
    out.append((source, edited, None))
    return out


def instructpix2pix(folder, triplets):
    def image(data):
        return {"bytes": data, "path": None}

    table = pa.table(
        {
            "original_prompt": ["a scene"] * len(triplets),
            "original_image": [image(s) for s, _, _ in triplets],
            "edit_prompt": [i for _, _, i in triplets],
            "edited_prompt": ["a scene, edited"] * len(triplets),
            "edited_image": [image(e) for _, e, _ in triplets],
        }
    )
    folder.mkdir()
    pq.write_table(table, folder / "train-00000-of-00001.parquet")
    return folder


def magicbrush(path, triplets):
    def image(data):
        return {"bytes": data, "path": "x.png"}

    table = pa.table(
        {
            "img_id": [str(n) for n in range(len(triplets))],
            "turn_index": pa.array([1] * len(triplets), pa.int32()),
            "source_img": [image(s) for s, _, _ in triplets],
            "mask_img": [image(png()) for _ in triplets],
            "instruction": [i for _, _, i in triplets],
            "target_img": [image(e) for _, e, _ in triplets],
        }
    )
    pq.write_table(table, path)
    return path


def imagefolder(folder, triplets):
    folder.mkdir()
    lines = []
    for index, (source, edited, instruction) in enumerate(triplets):
        (folder / f"in{index}.png").write_bytes(source)
        (folder / f"out{index}.png").write_bytes(edited)
        lines.append(
            json.dumps(
                {
                    "input_image_file_name": f"in{index}.png",
                    "output_image_file_name": f"out{index}.png",
                    "edit": instruction,
                }
            )
        )
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    return folder


def webdataset(path, triplets):
    with tarfile.open(path, "w") as archive:
        for index, (source, edited, instruction) in enumerate(triplets):
            members = {"source.png": source, "edited.png": edited}
            if instruction is not None:
                members["txt"] = instruction.encode()
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{index:05d}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def test_bad_images_are_named_not_raised(triplets):
    source, edited, _ = triplets[0]
    assert check_image(edited) is None
    assert check_image(None) == "missing_image"
    for reason, data in dict(BAD, truncated_image=edited[: len(edited) // 2]).items():
        assert check_image(data) == reason
    assert check_image(png((100, 100)), max_pixels=50 * 50) == "oversized_image"


def test_three_public_layouts_are_read_and_scored(tmp_path, triplets, capsys):
    data = with_bad(triplets)
    specs = [
        instructpix2pix(tmp_path / "instructpix2pix", data),
        magicbrush(tmp_path / "magicbrush.parquet", data),
        imagefolder(tmp_path / "hq-edit", data),
        webdataset(tmp_path / "shards.tar", data),
    ]
    output = tmp_path / "out"
    args = ["score", *map(str, specs), "--judge", JUDGE, "--sample", "100", "--output", str(output)]
    assert main(args + ["--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "magicbrush" in printed and "oversized_image 1" in printed
    report = json.loads((output / "scores.json").read_text())
    assert (output / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert set(report["datasets"]) == {"instructpix2pix", "magicbrush", "hq-edit", "shards"}
    expected_rejects = {reason: 1 for reason in BAD} | {"missing_instruction": 1}
    means = set()
    for name, d in report["datasets"].items():
        assert d["n"] == len(triplets), name
        assert d["rejected"] == expected_rejects, name
        for key in ("adherence", "aesthetics"):
            low, high = d[f"{key}_ci"]
            assert 1 <= low <= d[f"{key}_mean"] <= high <= 5
        low, high = d["pass_rate_ci"]
        assert 0 <= low <= d["pass_rate"] <= high <= 1
        means.add((d["adherence_mean"], d["aesthetics_mean"], d["pass_rate"]))
    assert len(means) == 1  # the same triplets in four layouts score the same
    again = score_datasets([str(specs[1])], JUDGE, sample=100, rounds=200, seed=0)
    assert again["datasets"]["magicbrush"] == report["datasets"]["magicbrush"]


def test_the_sample_is_random_seeded_and_capped(tmp_path, triplets):
    path = magicbrush(tmp_path / "mb.parquet", triplets)
    name, first, total = read_sample(str(path), 10, seed=1, columns={})
    first = list(first)
    second = list(read_sample(str(path), 10, seed=1, columns={})[1])
    other = list(read_sample(str(path), 10, seed=2, columns={})[1])
    assert (name, total, len(first)) == ("mb", len(triplets), 10)
    assert [s.instruction for s in first] == [s.instruction for s in second]
    assert [s.instruction for s in first] != [s.instruction for s in other]
    everything = list(read_sample(str(path), 1000, seed=1, columns={})[1])
    assert len(everything) == len(triplets)


def test_columns_can_be_named(tmp_path, triplets):
    table = pa.table(
        {
            "before": [s for s, _, _ in triplets],
            "after": [e for _, e, _ in triplets],
            "what": [i for _, _, i in triplets],
        }
    )
    pq.write_table(table, tmp_path / "custom.parquet")
    with pytest.raises(ValueError, match="--columns"):
        read_sample(str(tmp_path / "custom.parquet"), 5, 0, {})
    columns = parse_columns("source=before,edited=after,instruction=what")
    samples = list(read_sample(str(tmp_path / "custom.parquet"), 5, 0, columns)[1])
    assert all(s.source and s.edited and s.instruction for s in samples)
    with pytest.raises(ValueError):
        parse_columns("origin=before")


def test_a_hub_dataset_is_streamed_through_the_datasets_library(monkeypatch, triplets):
    datasets = pytest.importorskip("datasets")
    local = datasets.Dataset.from_dict(
        {
            "source_img": [s for s, _, _ in triplets],
            "target_img": [e for _, e, _ in triplets],
            "instruction": [i for _, _, i in triplets],
        }
    )
    asked = {}

    def load_dataset(name, split, streaming):
        asked.update(name=name, split=split, streaming=streaming)
        return local.to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    name, samples, total = read_sample("osunlp/MagicBrush:dev", 8, seed=0, columns={})
    samples = list(samples)
    assert asked == {"name": "osunlp/MagicBrush", "split": "dev", "streaming": True}
    assert (name, len(samples), total) == ("osunlp__MagicBrush:dev", 8, -1)
    assert all(check_image(s.edited) is None for s in samples)


def test_a_missing_local_dataset_is_one_clear_error(tmp_path, capsys):
    from nhr.cli import main

    missing = str(tmp_path / "nothing.parquet")
    assert main(["score", missing, "--judge", "configs/quickstart.yaml"]) == 2
    error = capsys.readouterr().err
    assert error == f"nhr: error: {missing}: no such file or folder\n"


def test_a_hub_dataset_that_cannot_be_opened_is_one_clear_error(monkeypatch, capsys):
    """Offline, a mistyped id or a relative path that reads like one: one line, exit 2."""
    datasets = pytest.importorskip("datasets")
    from nhr.cli import main

    def unreachable(name, split, streaming):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    assert main(["score", "not-a-hub/id", "--judge", "configs/quickstart.yaml"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("nhr: error: not-a-hub/id: no such local file or folder")
    assert "ConnectionError: Couldn't reach 'not-a-hub/id' on the Hub" in error


def test_a_judge_that_answers_nothing_is_a_failed_score(tmp_path, triplets, capsys):
    """A judge whose every call fails (a dead server, a refused key) scored nothing: that is
    exit 3 with one line, not a table of n 0 and exit 0."""
    config = yaml.safe_load(Path(JUDGE).read_text())
    config["models"]["validator"]["faults"] = {"timeout": 1.0}  # every call times out
    config["retry"] = {"max_attempts": 1, "backoff_s": 0.0}
    judge = tmp_path / "judge.yaml"
    judge.write_text(yaml.safe_dump(config))
    spec = magicbrush(tmp_path / "magicbrush.parquet", triplets)
    assert main(["score", str(spec), "--judge", str(judge), "--sample", "5"]) == 3
    assert "no triplet could be scored" in capsys.readouterr().err


def test_an_unknown_role_is_one_line(tmp_path, triplets, capsys):
    spec = magicbrush(tmp_path / "magicbrush.parquet", triplets)
    assert main(["score", str(spec), "--judge", JUDGE, "--role", "nosuch"]) == 2
    assert capsys.readouterr().err.startswith("nhr: error: --role 'nosuch' is not a model role")


def test_a_tar_cut_short_keeps_what_it_holds_and_a_non_tar_is_one_line(tmp_path, triplets, capsys):
    whole = webdataset(tmp_path / "whole.tar", triplets)
    data = whole.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) * 2 // 3])  # a copy interrupted part way
    report = score_datasets([str(cut)], JUDGE, sample=100, rounds=50, seed=0)
    assert 0 < report["datasets"]["cut"]["n"] < len(triplets)
    (tmp_path / "notatar.tar").write_bytes(b"this is not a tar archive" * 40)
    assert main(["score", str(tmp_path / "notatar.tar"), "--judge", JUDGE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a readable tar archive" in err[0]


def test_scoring_again_into_the_same_output_asks_the_judge_nothing_new(
    tmp_path, triplets, monkeypatch, capsys
):
    """The judge's answers are kept in OUTPUT/cache: a killed score run again does not pay
    twice for what was answered."""
    from nhr.backends.sim import SimBackend

    spec = magicbrush(tmp_path / "magicbrush.parquet", triplets)
    argv = ["score", str(spec), "--judge", JUDGE, "--output", str(tmp_path / "out")]
    assert main([*argv, "--bootstrap", "50"]) == 0
    first = json.loads((tmp_path / "out" / "scores.json").read_text())
    asked = []
    original = SimBackend.ask

    def counting(self, requests):
        asked.extend(requests)
        return original(self, requests)

    monkeypatch.setattr(SimBackend, "ask", counting)
    assert main([*argv, "--bootstrap", "50"]) == 0
    assert not asked
    assert json.loads((tmp_path / "out" / "scores.json").read_text()) == first
    assert main(["score", str(spec), "--judge", JUDGE, "--bootstrap", "50"]) == 0
    assert asked  # without --output nothing is kept: the judge is asked again


def test_an_output_that_cannot_be_written_is_found_before_the_judge_is_asked(
    tmp_path, triplets, monkeypatch, capsys
):
    from nhr.backends.sim import SimBackend

    asked = []
    monkeypatch.setattr(SimBackend, "ask", lambda self, requests: asked.extend(requests) or [])
    spec = magicbrush(tmp_path / "magicbrush.parquet", triplets)
    (tmp_path / "afile").write_text("")
    argv = ["score", str(spec), "--judge", JUDGE, "--output", str(tmp_path / "afile" / "out")]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("nhr: error: ") and not asked
