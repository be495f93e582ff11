"""`nhr export RUN --format F`: each format read by its consumer's reader (or checked against
the trainer's documented layout), splits that never leak, --mini balance, determinism, runs on
object storage, --push-to-hub and the one-line errors."""

import csv
import io
import json
import shutil
import tarfile
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml
from PIL import Image

from helpers import dataset_rows, table_rows
from nhr.cli import main
from nhr.exports import export_run
from nhr.exports.common import TEST, TRAIN, split_of

SHARE = 0.4  # the small run has few sources: a large test share puts rows in both splits


@pytest.fixture(scope="module")
def exports(mined, tmp_path_factory):
    """Each format exported once from the session's finished run: format -> output folder."""
    run_dir, _ = mined
    root = tmp_path_factory.mktemp("exports")
    made = {}

    def get(fmt):
        if fmt not in made:
            export_run(run_dir, fmt, output=root / fmt, split_test=SHARE)
            made[fmt] = root / fmt
        return made[fmt]

    return get


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return str(cache)


def released(run_dir):
    return {r["triplet_id"]: r for r in table_rows(run_dir, "compose") if r["status"] == "ok"}


# -- one test per format --------------------------------------------------------------------------


def test_hf_loads_with_datasets_as_train_and_test(mined, exports, hf_cache):
    datasets = pytest.importorskip("datasets")
    from nhr.stages.export import DATASET_SCHEMA

    run_dir, _ = mined
    ds = datasets.load_dataset(str(exports("hf")), cache_dir=hf_cache)
    assert set(ds) == {TRAIN, TEST}
    assert ds[TRAIN].column_names == DATASET_SCHEMA.names
    ids = list(ds[TRAIN]["sample_id"]) + list(ds[TEST]["sample_id"])
    assert sorted(ids) == sorted(r["sample_id"] for r in dataset_rows(run_dir))
    first = ds[TEST][0]
    assert isinstance(first["source_image"], Image.Image)
    assert first["edited_image"].size == (first["img_width"], first["img_height"])


def test_ip2p_has_the_columns_of_the_instruct_pix2pix_script(mined, exports, hf_cache):
    """diffusers' train_instruct_pix2pix.py reads `--dataset_name DIR` with load_dataset and
    the columns input_image, edit_prompt and edited_image by default."""
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(exports("ip2p")), cache_dir=hf_cache)
    train = ds[TRAIN]
    assert train.column_names[:3] == ["input_image", "edit_prompt", "edited_image"]
    row = train[0]
    assert isinstance(row["input_image"], Image.Image)
    assert isinstance(row["edited_image"], Image.Image)
    triplet = released(mined[0])[row["sample_id"]]
    assert row["edit_prompt"] == triplet["instruction"]
    assert row["input_image"].size == (triplet["width"], triplet["height"])


def webdataset_samples(tar_path):
    """Samples as WebDataset groups tar members: consecutive members with the same key (the
    base name up to its first dot) form a sample; the rest of the name is the extension."""
    samples = []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            directory, _, base = member.name.rpartition("/")
            key, _, extension = base.partition(".")
            key = f"{directory}/{key}" if directory else key
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][extension] = tar.extractfile(member).read()
    return samples


def test_webdataset_shards_group_into_samples(mined, exports):
    out = exports("webdataset")
    triplets = released(mined[0])
    seen = {}
    for split in (TRAIN, TEST):
        for shard in sorted(out.glob(f"{split}-*.tar")):
            for sample in webdataset_samples(shard):
                assert set(sample) == {"__key__", "source.png", "edited.png", "txt", "json"}
                meta = json.loads(sample["json"])
                assert meta["sample_id"] == sample["__key__"]
                assert meta["split"] == split
                assert sample["txt"].decode() == triplets[meta["sample_id"]]["instruction"]
                Image.open(io.BytesIO(sample["source.png"])).verify()
                seen[sample["__key__"]] = split
    assert set(seen) == set(triplets)
    assert set(seen.values()) == {TRAIN, TEST}


def test_webdataset_reads_with_the_webdataset_package(exports):
    wds = pytest.importorskip("webdataset")
    out = exports("webdataset")
    urls = [str(p) for p in sorted(out.glob("train-*.tar"))]
    pipeline = wds.WebDataset(urls, shardshuffle=False).decode("pil")
    samples = list(pipeline.to_tuple("source.png", "txt", "edited.png", "json"))
    assert samples
    source, text, edited, meta = samples[0]
    assert isinstance(source, Image.Image) and isinstance(edited, Image.Image)
    assert text == meta["edit_instruction"]


@pytest.mark.parametrize(
    "fmt, control_column", [("kontext-lora", "kontext_images"), ("qwen-edit-lora", "edit_image")]
)
def test_lora_folders_match_the_trainers_layouts(mined, exports, fmt, control_column):
    out = exports(fmt)
    triplets = released(mined[0])
    stems = set()
    for split in (TRAIN, TEST):
        folder = out / split
        targets = sorted((folder / "target").glob("*.png"))
        assert targets
        for target in targets:
            # ai-toolkit / musubi-tuner: same-stem caption beside the target image, control
            # image with the same file name in the control folder
            caption = target.with_suffix(".txt").read_text()
            assert caption == triplets[target.stem]["instruction"]
            control = folder / "control" / target.name
            digest = triplets[target.stem]["source_image"]
            source = mined[0] / "images" / digest[:2] / f"{digest}.png"
            assert control.read_bytes() == source.read_bytes()
            stems.add(target.stem)
        lines = (folder / "metadata.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert len(records) == len(targets)
        for record in records:
            assert set(record) == {"image_path", "control_path", "caption"}
            # relative to the export folder, where musubi.toml is run from
            assert record["image_path"].startswith(f"{split}/target/")
            assert (out / record["image_path"]).is_file()
            assert (out / record["control_path"]).is_file()
        with open(folder / "metadata.csv", newline="") as handle:
            table = list(csv.DictReader(handle))
        assert list(table[0]) == ["image", "prompt", control_column]
        assert all(
            (folder / r["image"]).is_file() and (folder / r[control_column]).is_file()
            for r in table
        )
    assert stems == set(triplets)
    config = yaml.safe_load((out / "ai-toolkit.yaml").read_text())
    assert (out / config["datasets"][0]["folder_path"]).is_dir()
    assert (out / config["datasets"][0]["control_path"]).is_dir()
    musubi = tomllib.loads((out / "musubi.toml").read_text())
    assert (out / musubi["datasets"][0]["control_directory"]).is_dir()


def test_preference_pairs_the_selected_candidate_with_rejected_ones(mined, exports, hf_cache):
    datasets = pytest.importorskip("datasets")
    run_dir, _ = mined
    ds = datasets.load_dataset(str(exports("preference")), cache_dir=hf_cache)
    rows = [row for split in ds for row in ds[split]]
    assert rows
    selected = {r["candidate_id"] for r in table_rows(run_dir, "select") if r["status"] == "ok"}
    verdicts = {r["candidate_id"]: r for r in table_rows(run_dir, "validate")}
    for row in rows:
        assert row["chosen_id"] in selected
        assert verdicts[row["rejected_id"]]["status"] == "dropped"
        assert row["rejected_adherence"] == verdicts[row["rejected_id"]]["adherence"]
        assert row["chosen_score"] > row["rejected_score"]
        assert row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"])
        assert isinstance(row["chosen"], Image.Image) and isinstance(row["rejected"], Image.Image)


# -- splits, --mini, determinism ------------------------------------------------------------------


def test_split_never_separates_a_source_from_its_inverses_and_composites(mined, exports):
    run_dir, _ = mined
    triplets = released(run_dir)
    split = {}
    for shard in exports("webdataset").glob("*.tar"):
        for sample in webdataset_samples(shard):
            split[sample["__key__"]] = json.loads(sample["json"])["split"]
    by_source = defaultdict(set)
    for triplet_id, triplet in triplets.items():
        by_source[triplet["source_id"]].add(split[triplet_id])
    assert all(len(splits) == 1 for splits in by_source.values())
    for triplet_id, triplet in triplets.items():
        for parent in triplet["parents"]:
            if parent in triplets:  # inverses and composites name released parents
                assert split[parent] == split[triplet_id]
    assert {TRAIN, TEST} == set(split.values())


def test_split_share_follows_the_seeded_hash():
    ids = [f"source-{i}" for i in range(20_000)]
    share = sum(split_of(i, 0.02, 0) == TEST for i in ids) / len(ids)
    assert 0.017 < share < 0.023
    assert [split_of(i, 0.02, 0) for i in ids[:500]] == [split_of(i, 0.02, 0) for i in ids[:500]]
    assert [split_of(i, 0.3, 0) for i in ids[:500]] != [split_of(i, 0.3, 1) for i in ids[:500]]
    assert all(split_of(i, 0.0, 0) == TRAIN for i in ids[:500])


def test_mini_spreads_over_kinds_and_categories(mined, tmp_path):
    run_dir, _ = mined
    groups = Counter((t["kind"], t["category"]) for t in released(run_dir).values())
    count = len(groups) + 3  # every group once, then a second round for some
    export_run(run_dir, "webdataset", output=tmp_path / "mini", split_test=0, mini=count)
    picked = Counter()
    for shard in (tmp_path / "mini").glob("*.tar"):
        for sample in webdataset_samples(shard):
            meta = json.loads(sample["json"])
            picked[(meta["kind"], meta["category"])] += 1
    assert sum(picked.values()) == count
    assert set(picked) == set(groups)  # every group is represented
    # round robin: no group has two more rows than another, unless it ran out
    assert all(n <= min(picked.values()) + 1 or n == groups[g] for g, n in picked.items())


def folder_bytes(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("fmt", ["hf", "webdataset", "qwen-edit-lora", "preference"])
def test_same_run_gives_the_same_bytes(mined, exports, tmp_path, fmt):
    export_run(mined[0], fmt, output=tmp_path / "again", split_test=SHARE)
    assert folder_bytes(tmp_path / "again") == folder_bytes(exports(fmt))


def test_a_second_export_replaces_the_first(mined, tmp_path):
    out = tmp_path / "out"
    export_run(mined[0], "hf", output=out, split_test=0.5)
    export_run(mined[0], "hf", output=out, split_test=0)
    assert not list((out / "data").glob("test-*"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_default_output_is_inside_the_run(mined, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    summary = export_run(run_dir, "ip2p", mini=3)
    assert Path(summary["output"]) == run_dir / "exports" / "ip2p"
    assert json.loads((run_dir / "exports" / "ip2p" / "nhr-export.json").read_text())["mini"] == 3


# -- object storage, the Hub, the command line ----------------------------------------------------


def test_run_on_object_storage_exports_to_a_local_folder(mined, bucket, tmp_path, exports):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(mined[0]) + "/", f"{bucket}/run", recursive=True)
    argv = ["export", f"{bucket}/run", "--format", "hf", "--split-test", str(SHARE)]
    assert main([*argv, "--output", str(tmp_path / "hf")]) == 0
    assert folder_bytes(tmp_path / "hf") == folder_bytes(exports("hf"))


def test_export_to_object_storage_writes_the_same_files(mined, bucket, exports):
    import s3fs

    export_run(mined[0], "qwen-edit-lora", output=f"{bucket}/out/qwen", split_test=SHARE)
    fs = s3fs.S3FileSystem()
    prefix = f"{bucket}/out/qwen/".removeprefix("s3://")
    written = {path.removeprefix(prefix): fs.cat_file(path) for path in fs.find(prefix)}
    assert written == folder_bytes(exports("qwen-edit-lora"))


# --push-to-hub: tests/test_dataset_card.py (a local stand-in Hub)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "tfrecord"], "unknown export format 'tfrecord'"),
        (["--format", "hf", "--split-test", "1.5"], "--split-test must be in [0, 1)"),
        (["--format", "hf", "--mini", "0"], "--mini must be at least 1"),
        (["--format", "ip2p", "--push-to-hub", "me/x"], "--push-to-hub works with --format hf"),
        (["--output", "somewhere"], "--output needs --format"),
        (["--split-test", "0.5"], "--split-test needs --format"),
        (["--seed", "3"], "--seed needs --format"),
    ],
)
def test_bad_options_are_one_line_errors(mined, capsys, argv, message):
    assert main(["export", str(mined[0]), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nhr: error: ") and message in err and err.count("\n") == 1


def test_an_output_that_would_replace_other_files_is_refused(mined, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"keep me")
    for output in (run_dir, tmp_path, run_dir / "stages", foreign):
        assert main(["export", str(run_dir), "--format", "hf", "--output", str(output)]) == 2
        assert "nhr: error: " in capsys.readouterr().err
    assert (foreign / "holiday.jpg").read_bytes() == b"keep me"
    assert (run_dir / "stages").is_dir()


def test_an_unfinished_run_is_a_one_line_error(mined, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    (run_dir / "stages" / "compose" / "shard-00001.done.json").unlink()
    assert main(["export", str(run_dir), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert "has not finished 'compose'" in err and err.count("\n") == 1
    assert not (run_dir / "exports").exists()


def test_a_rejected_candidate_scored_above_the_chosen_one_is_not_paired():
    """A candidate that missed one threshold narrowly but beat the chosen one on the other
    score has the higher mean: the validator's scores do not say which is better."""
    from types import SimpleNamespace

    from nhr.exports.preference import shard_pairs

    def candidate(name):
        return {
            "candidate_id": name,
            "source_id": "s",
            "edit_id": "e",
            "source_image": "src",
            "edited_image": f"img-{name}",
            "model": None,
        }

    def verdict(name, status, adherence, aesthetics):
        return {
            "candidate_id": name,
            "status": status,
            "adherence": adherence,
            "aesthetics": aesthetics,
            "reason": None if status == "ok" else "below_threshold",
            "model": None,
        }

    tables = {
        "edit": [candidate(n) for n in ("chosen", "lower", "higher")],
        "validate": [
            verdict("chosen", "ok", 4.8, 4.7),
            verdict("lower", "dropped", 4.9, 3.0),
            verdict("higher", "dropped", 5.0, 4.6),  # mean 4.796 > 4.750
        ],
        "select": [
            {
                "candidate_id": "chosen",
                "status": "ok",
                "source_id": "s",
                "edit_id": "e",
                "instruction": "make it blue",
                "category": "colour",
                "operation": "change_color",
            }
        ],
    }
    job = SimpleNamespace(store=SimpleNamespace(read_rows=lambda stage, shard: tables[stage]))
    pairs = shard_pairs(job, 0)
    assert [p["rejected_id"] for p in pairs] == ["lower"]
    assert pairs[0]["margin"] > 0
