"""The labels table (nhr/labels.py), the rating sample and simulated raters (nhr/label_sample.py)."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from helpers import table_rows
from nhr.backends.sim.raters import RaterPool, rate
from nhr.cli import main
from nhr.label_sample import UNSCORED, bucket_of, candidates, run_sample, stratified_sample
from nhr.labels import (
    LabelsError,
    ground_truth,
    item_id,
    labels_table,
    parquet_bytes,
    plain_means,
    read_labels,
)
from nhr.store import RunStore

ROWS = [
    {"item": "c1", "rater": "ann", "instruction_score": 5, "aesthetics_score": 4.5},
    {"item": "c1", "rater": "ben", "instruction_score": 4, "aesthetics_score": 4},
    {"item": "c2", "rater": "ann", "instruction_score": 3, "aesthetics_score": 2, "comment": "meh"},
]


def write_csv(path, header, lines):
    path.write_text("\n".join([",".join(header), *lines]) + "\n")
    return path


def test_the_three_file_formats_read_alike(tmp_path):
    header = ["item", "rater", "instruction_score", "aesthetics_score", "comment"]
    write_csv(
        tmp_path / "l.csv",
        header,
        [",".join(str(r.get(k, "")) for k in header) for r in ROWS],
    )
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "l.parquet").write_bytes(parquet_bytes(ROWS))
    tables = [read_labels(tmp_path / f"l.{suffix}") for suffix in ("csv", "jsonl", "parquet")]
    assert tables[0] == tables[1] == tables[2]
    assert tables[0][2]["comment"] == "meh" and tables[0][0]["comment"] is None
    assert tables[0][0]["aesthetics_score"] == 4.5
    assert labels_table(tables[0]).num_rows == 3


def test_a_folder_reads_every_labels_file(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert len(read_labels(tmp_path)) == 2


def test_outside_triplets_get_an_id_from_their_parts(tmp_path):
    row = {
        "source_image": "img/a.png",
        "edited_image": "img/a-edit.png",
        "instruction": "Remove the cat",
        "rater": "ann",
        "instruction_score": 4,
        "aesthetics_score": 5,
    }
    (tmp_path / "l.jsonl").write_text(json.dumps(row) + "\n")
    [read] = read_labels(tmp_path / "l.jsonl")
    assert read["item"] == item_id("img/a.png", "img/a-edit.png", "Remove the cat")
    assert read["item"] != item_id("img/a.png", "img/a-edit.png", "Remove the dog")


@pytest.mark.parametrize(
    "line, message",
    [
        ("c1,ann,6,3", "l.csv:3: instruction_score must be from 1 to 5, got '6'"),
        ("c1,ann,good,3", "l.csv:3: instruction_score must be a number from 1 to 5"),
        ("c1,,4,3", "l.csv:3: rater is missing"),
        ("c1,ann,4,", "l.csv:3: aesthetics_score is missing"),
        (",ann,4,3", "l.csv:3: item is missing; give a run candidate id"),
        ("c1,ann,4,3,extra", "l.csv:3: more values than header columns"),
        ("c1,ann,nan,3", "l.csv:3: instruction_score must be from 1 to 5"),
    ],
)
def test_a_bad_csv_row_names_file_line_and_problem(tmp_path, line, message):
    path = write_csv(
        tmp_path / "l.csv",
        ["item", "rater", "instruction_score", "aesthetics_score"],
        ["c0,ann,4,4", line],
    )
    with pytest.raises(LabelsError) as error:
        read_labels(path)
    assert str(error.value).startswith(str(tmp_path / message.split(":")[0]))
    assert message in str(error.value)


def test_bad_jsonl_and_columns_are_named(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n{not json\n")
    with pytest.raises(LabelsError, match=r"l.jsonl:3: not a JSON object"):
        read_labels(path)
    path.write_text(json.dumps({**ROWS[0], "score": 3}) + "\n")
    with pytest.raises(LabelsError, match=r"l.jsonl:1: unknown column\(s\) score"):
        read_labels(path)
    path.write_text(json.dumps({**ROWS[0], "instruction_score": True}) + "\n")
    with pytest.raises(LabelsError, match="must be a number"):
        read_labels(path)
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(LabelsError, match="x.parquet: not a readable Parquet file"):
        read_labels(tmp_path / "x.parquet")
    with pytest.raises(LabelsError, match="no labels file"):
        read_labels(tmp_path / "empty-folder")


def test_ground_truth_removes_each_raters_bias():
    # ann rates both items, ben only the first. On c1 ann is 0.5 above the mean and ben 0.5
    # below, so b_ann = (0.5 + 0) / 2 = 0.25 and b_ben = -0.5 (the paper's definition).
    rows = read_rows(ROWS)
    truth = ground_truth(rows)
    assert truth["c1"][0] == pytest.approx(((5 - 0.25) + (4 + 0.5)) / 2)
    assert truth["c2"][0] == pytest.approx(3 - 0.25)
    assert plain_means(rows)["c1"][0] == pytest.approx(4.5)
    assert ground_truth([]) == {}


def read_rows(rows):
    from nhr.labels import validate_row

    return [validate_row("test", n, dict(row)) for n, row in enumerate(rows)]


def test_bias_correction_lowers_the_error_against_the_simulators_truth():
    """The acceptance check of issue 10: on simulated raters (personal bias and noise, panels
    of 2-4 per batch), the corrected labels are closer to the truth than plain means."""
    for seed in range(4):
        generator = np.random.default_rng(seed)
        truth = np.clip(generator.normal(3.5, 1.0, size=(1200, 2)), 1, 5)
        ratings = rate(truth, RaterPool(), seed=seed)
        rows = [
            {
                "item": f"i{item}",
                "rater": f"r{rater}",
                "instruction_score": float(scores[0]),
                "aesthetics_score": float(scores[1]),
            }
            for item, rater, scores in zip(ratings.item, ratings.rater, ratings.scores)
        ]
        corrected, plain = ground_truth(rows), plain_means(rows)
        order = [f"i{n}" for n in range(len(truth))]
        corrected_error = np.abs(np.array([corrected[i] for i in order]) - truth).mean()
        plain_error = np.abs(np.array([plain[i] for i in order]) - truth).mean()
        assert corrected_error < plain_error, (seed, corrected_error, plain_error)


# --- the sample --------------------------------------------------------------------------------


def test_buckets_cut_the_lower_score():
    assert bucket_of(None, 4.0) == UNSCORED
    assert bucket_of(1.0, 5.0) == "1-2"
    assert bucket_of(4.9, 4.4) == "4-4.5"
    assert bucket_of(4.5, 5.0) == "4.5-5"


def test_the_sample_spreads_over_buckets_and_categories():
    items = []
    for n in range(200):  # most items high-scoring, like a run's validated pool
        low = 4.8 if n < 150 else 1.5 + (n % 3)
        items.append({"item": f"c{n:03d}", "bucket": bucket_of(low, low), "category": "AB"[n % 2]})
    sample = stratified_sample(items, 40, seed=1)
    buckets = Counter(item["bucket"] for item in sample)
    assert len(buckets) == 4 and max(buckets.values()) - min(buckets.values()) <= 1
    for bucket in buckets:
        categories = Counter(i["category"] for i in sample if i["bucket"] == bucket)
        assert max(categories.values()) - min(categories.values()) <= 1
    assert len({item["item"] for item in sample}) == 40
    assert stratified_sample(items, 40, seed=1) == sample
    assert stratified_sample(items, 40, seed=2) != sample
    assert len(stratified_sample(items, 500, seed=1)) == 200


def test_simulated_raters_label_a_run(mined, tmp_path, capsys):
    run_dir, _ = mined
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("labels"))
    store = RunStore(copy)
    assert main(["label", str(copy), "--sample", "12", "--simulate-raters", "3"]) == 0
    assert "3 simulated raters rated 12 triplets" in capsys.readouterr().out
    first = (copy / "labels" / "simulated.parquet").read_bytes()
    rows = read_labels(copy)
    assert len(rows) == 36
    assert Counter(row["item"] for row in rows) == dict.fromkeys(
        [item["item"] for item in run_sample(store, 12)], 3
    )
    assert all(row["rater"].startswith("sim-rater-") and row["instruction"] for row in rows)
    assert all(float(row["instruction_score"]).is_integer() for row in rows)
    known = {c["item"] for c in candidates(store)}
    assert set(ground_truth(rows)) <= known
    assert main(["label", str(copy), "--sample", "12", "--simulate-raters", "3"]) == 0
    assert (copy / "labels" / "simulated.parquet").read_bytes() == first  # deterministic


def test_a_validated_only_sample_calibrates_the_validator_on_every_item(mined, tmp_path, capsys):
    """By default the pre-filter's rejects fill the low buckets, and the validator never
    scored them; --validated-only keeps to what it scored, so calibrating it on the run's
    stored scores uses every rated item. A run whose validator scored nothing says so."""
    run_dir, _ = mined
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("labels"))
    store = RunStore(copy)
    validated = {row["candidate_id"] for row in table_rows(copy, "validate")}
    plain = {item["item"] for item in run_sample(store, 40)}
    assert plain - validated  # some of the default sample the validator never saw
    args = ["label", str(copy), "--sample", "40", "--simulate-raters", "3", "--validated-only"]
    assert main(args) == 0
    rated = {row["item"] for row in read_labels(copy)}
    assert len(rated) == min(40, len(validated)) and rated <= validated
    capsys.readouterr()
    report = tmp_path / "calibration"
    calibrate = ["calibrate", str(copy), "--run", str(copy), "--output", str(report)]
    assert main([*calibrate, "--bootstrap", "20"]) == 0
    figures = json.loads((report / "calibration.json").read_text())["judges"]["validator"]
    assert figures["n"] == len(rated) and figures["unscored"] == 0
    for marker in (copy / "stages" / "validate").glob("shard-*.done.json"):
        marker.unlink()  # as if the validator had not run yet
    assert main(["label", str(copy), "--sample", "5", "--validated-only"]) == 2
    assert "no candidate the validator scored to rate yet" in capsys.readouterr().err


def test_label_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["label", str(tmp_path), "--sample", "3", "--simulate-raters", "2"]) == 2
    assert "not an nhr run directory" in capsys.readouterr().err


def test_labels_live_on_object_storage_too(mined, bucket, s3_server, tmp_path):
    import s3fs

    run_dir, _ = mined
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.put(str(run_dir), f"{bucket[5:]}/run", recursive=True)
    url = f"{bucket}/run"
    assert main(["label", url, "--sample", "6", "--simulate-raters", "2"]) == 0
    rows = read_labels(url)
    assert len(rows) == 12
    assert read_labels(f"{url}/labels/simulated.parquet") == rows
    out = tmp_path / "openai"
    assert main(["export-tuning", url, "--format", "openai", "--output", str(out)]) == 0
    assert len((out / "train.jsonl").read_text().splitlines()) >= 4


def test_a_small_sample_covers_every_category_whatever_the_seed():
    """Six buckets, twelve categories: the first twelve picks are twelve categories, not the
    same first few of every bucket."""
    categories = [f"op{k:02d}" for k in range(12)]
    items = [
        {"item": f"{b}-{c}-{n}", "bucket": b, "category": c}
        for b in range(6)
        for c in categories
        for n in range(5)
    ]
    for seed in (0, 1, 2):
        sample = stratified_sample(items, 12, seed=seed)
        assert {item["category"] for item in sample} == set(categories), seed
        assert {item["bucket"] for item in sample[:6]} == set(range(6))
