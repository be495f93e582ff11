"""The dataset card (RUN/dataset/README.md and the `hf` export's): Hugging Face metadata that
huggingface_hub's card loader reads, models, thresholds, survival, counts, loading and
citation; and `nhr export --push-to-hub REPO [--private]` through the real huggingface_hub and
datasets code, against a local HTTP server that speaks the Hub's API (tests/local_hub.py)."""

import re
import shutil

import pytest
import yaml

from helpers import dataset_rows
from local_hub import LocalHub, forbid_network, use_hub
from nhr.cli import main
from nhr.store import RunStore


def load_card(path):
    from huggingface_hub import DatasetCard

    return DatasetCard.load(path)


@pytest.fixture
def licensed_run(mined, tmp_path):
    """A copy of the finished run whose config sets export.license, exported again."""
    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    store = RunStore(run_dir)
    config = store.read_config()
    config.setdefault("export", {})["license"] = "cc-by-4.0"
    store.write_config(config)
    assert main(["export", str(run_dir)]) == 0
    return run_dir


def test_card_metadata_is_read_by_huggingface_hub(mined):
    run_dir, _ = mined
    card = load_card(run_dir / "dataset" / "README.md")
    rows = dataset_rows(run_dir)
    data = card.data.to_dict()
    assert data["task_categories"] == ["image-to-image"]
    assert data["size_categories"] == ["n<1K"] and len(rows) < 1000
    assert data["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    assert "license" not in data  # unset: the card says so instead of guessing
    text = card.text
    assert "No licence was chosen" in text
    assert f"**{len(rows):,} triplets.**" in text
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert f"adherence >= {config['validate']['adherence_threshold']}" in text
    for role in ("designer", "generator", "gate", "editor", "prefilter", "validator", "inverter"):
        assert f"| {role} | sim |" in text, role
    assert "| plausibility gate |" in text and "| released |" in text  # the survival table
    for title in ("kind", "category", "style"):
        assert f"| {title} | triplets |" in text
    # the pre-filter's rules, not only the validator's (what low_prefilter_scores compared with)
    prefilter = {"min_adherence": 3.5, "min_aesthetics": 3.5, **config.get("prefilter", {})}
    assert (
        f"- pre-filter scores: adherence >= {prefilter['min_adherence']:g} and aesthetics >= "
        f"{prefilter['min_aesthetics']:g}"
    ) in text
    assert "- low-level check: at least" in text and "- pre-filter yes/no:" in text
    assert "datasets.load_dataset(" in text
    assert "eprint = {2507.14119}" in text and "@misc{" in text


def test_license_comes_from_the_config(licensed_run):
    card = load_card(licensed_run / "dataset" / "README.md")
    assert card.data.license == "cc-by-4.0"
    assert "Licence: `cc-by-4.0`" in card.text


def test_a_bad_license_is_a_clear_config_error():
    from nhr.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="export.license.*not a Hugging Face licence id"):
        parse_config({"models": "sim", "export": {"license": "Apache 2.0"}})


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local Hub (tests/local_hub.py) that the real huggingface_hub and datasets push to."""
    attempts = forbid_network(monkeypatch)
    with LocalHub(tmp_path / "hub") as local:
        use_hub(monkeypatch, local.url, tmp_path / "hf-home")
        yield local
    assert local.unknown == [], "requests the local Hub has no route for"
    assert local.failures == [], "requests the local Hub failed on"
    assert attempts == [], "connections beyond 127.0.0.1"


def test_push_the_run_dataset_with_its_card(licensed_run, hub, tmp_path):
    import datasets

    argv = ["export", str(licensed_run), "--push-to-hub", "me/triplets", "--private"]
    assert main(argv) == 0
    assert hub.visibility == {"me/triplets": "private"}
    # nhr's card, then datasets' commit of the shards and the card with its dataset_info
    assert [summary for _, summary in hub.commits] == ["Dataset card (nhr)", "Upload dataset"]
    files = hub.files("me/triplets")
    assert files[0] == "README.md" and files[1:], files
    assert all(re.fullmatch(r"data/train-\d{5}-of-\d{5}\.parquet", f) for f in files[1:]), files
    repo = hub.folder("me/triplets")
    card = load_card(repo / "README.md")
    assert card.data.license == "cc-by-4.0"
    assert card.data.to_dict()["dataset_info"]["splits"][0]["name"] == "train"
    assert card.text == load_card(licensed_run / "dataset" / "README.md").text
    pushed = datasets.load_dataset(str(repo), cache_dir=str(tmp_path / "load-cache"))["train"]
    assert sorted(pushed["sample_id"]) == sorted(r["sample_id"] for r in dataset_rows(licensed_run))

    # the retry the error message suggests: the repository exists, the shards are there already
    shards = {f: (repo / f).read_bytes() for f in files[1:]}
    assert main(argv) == 0
    assert hub.files("me/triplets") == files
    assert {f: (repo / f).read_bytes() for f in files[1:]} == shards
    assert load_card(repo / "README.md").data.to_dict() == card.data.to_dict()


def test_push_an_hf_export_with_both_splits(mined, hub, tmp_path):
    import datasets

    argv = ["export", str(mined[0]), "--format", "hf", "--split-test", "0.3"]
    assert main([*argv, "--output", str(tmp_path / "hf"), "--push-to-hub", "me/hf"]) == 0
    assert hub.visibility == {"me/hf": "public"}
    card = load_card(hub.folder("me/hf") / "README.md")
    splits = {f["split"] for f in card.data.to_dict()["configs"][0]["data_files"]}
    assert splits == {"train", "test"}
    data = [f for f in hub.files("me/hf") if f.startswith("data/")]
    assert {f.removeprefix("data/").split("-")[0] for f in data} == splits
    assert "## Models" in card.text and "2507.14119" in card.text
    pushed = datasets.load_dataset(str(hub.folder("me/hf")), cache_dir=str(tmp_path / "cache"))
    assert set(pushed) == splits
    ids = [i for split in splits for i in pushed[split]["sample_id"]]
    assert sorted(ids) == sorted(r["sample_id"] for r in dataset_rows(mined[0]))


def test_private_needs_push_to_hub(mined, capsys):
    assert main(["export", str(mined[0]), "--private"]) == 2
    assert "--private goes with --push-to-hub" in capsys.readouterr().err


def test_a_hub_that_cannot_be_reached_is_one_line_and_the_export_stays(
    mined, tmp_path, monkeypatch, capsys
):
    attempts = forbid_network(monkeypatch)
    with LocalHub(tmp_path / "hub") as down:
        pass  # started and stopped: nothing listens on its port any more
    use_hub(monkeypatch, down.url, tmp_path / "hf-home")
    out = tmp_path / "hf"
    argv = ["export", str(mined[0]), "--format", "hf", "--output", str(out)]
    assert main([*argv, "--push-to-hub", "me/hf"]) == 2
    # (datasets' own progress lines may come first)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nhr")]
    assert len(err) == 1 and "pushing to the Hub dataset me/hf failed" in err[0]
    assert "ConnectError:" in err[0] and "Connection refused" in err[0]
    assert "Traceback" not in err[0] and (out / "nhr-export.json").exists()
    assert attempts == []


def test_card_categories_are_ordered_like_the_report(mined):
    """Single operations first, then composites "A & B", each alphabetically: the report's
    order (nhr.analysis.report.category_sort_key), not one alphabetical list."""
    from nhr.analysis.report import category_sort_key

    text = load_card(mined[0] / "dataset" / "README.md").text
    table = text[text.index("| category | triplets |") :].split("\n\n", 1)[0]
    categories = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[2:]]
    composite = [" & " in category for category in categories]
    assert any(composite) and not all(composite)
    assert composite == sorted(composite)  # no composite before a single operation
    assert categories == sorted(categories, key=category_sort_key)
