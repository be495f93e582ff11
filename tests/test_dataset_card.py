"""The dataset card (RUN/dataset/README.md and the `hf` export's): Hugging Face metadata that
huggingface_hub's card loader reads, models, thresholds, survival, counts, loading and
citation; and `nhr export --push-to-hub REPO [--private]` against a local stand-in Hub."""

import shutil

import pytest
import yaml

from helpers import dataset_rows
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


class LocalHub:
    """Stands in for the Hub, no network: repositories are folders. `datasets` pushes through
    `DatasetDict.push_to_hub` (which, like the Hub's, keeps an existing README) and the card
    goes up through `huggingface_hub.HfApi`."""

    def __init__(self, root, monkeypatch):
        import datasets
        import huggingface_hub

        self.root = root
        self.private = {}
        hub = self

        def create_repo(api, repo_id, *, repo_type=None, private=None, exist_ok=False, **_):
            assert repo_type == "dataset"
            (hub.root / repo_id).mkdir(parents=True, exist_ok=True)
            hub.private[repo_id] = bool(private)

        def upload_file(api, *, path_or_fileobj, path_in_repo, repo_id, repo_type=None, **_):
            assert repo_type == "dataset" and repo_id in hub.private, "no repository yet"
            target = hub.root / repo_id / path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path_or_fileobj)

        def push_to_hub(dataset_dict, repo_id, private=None, **_):
            hub.private.setdefault(repo_id, bool(private))
            for split, dataset in dataset_dict.items():
                folder = hub.root / repo_id / "data"
                folder.mkdir(parents=True, exist_ok=True)
                dataset.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)
        monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", push_to_hub)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return LocalHub(tmp_path / "hub", monkeypatch)


def test_push_the_run_dataset_with_its_card(licensed_run, hub):
    import datasets

    argv = ["export", str(licensed_run), "--push-to-hub", "me/triplets", "--private"]
    assert main(argv) == 0
    repo = hub.root / "me" / "triplets"
    assert hub.private == {"me/triplets": True}
    card = load_card(repo / "README.md")
    assert card.data.license == "cc-by-4.0"
    assert card.text == load_card(licensed_run / "dataset" / "README.md").text
    pushed = datasets.load_dataset(str(repo), cache_dir=str(hub.root / "cache"))["train"]
    assert sorted(pushed["sample_id"]) == sorted(r["sample_id"] for r in dataset_rows(licensed_run))


def test_push_an_hf_export_with_both_splits(mined, hub, tmp_path):
    argv = ["export", str(mined[0]), "--format", "hf", "--split-test", "0.3"]
    assert main([*argv, "--output", str(tmp_path / "hf"), "--push-to-hub", "me/hf"]) == 0
    assert hub.private == {"me/hf": False}
    card = load_card(hub.root / "me" / "hf" / "README.md")
    splits = {f["split"] for f in card.data.to_dict()["configs"][0]["data_files"]}
    assert splits == {"train", "test"}
    assert {p.name.split("-")[0] for p in (hub.root / "me" / "hf" / "data").iterdir()} == splits
    assert "## Models" in card.text and "2507.14119" in card.text


def test_private_needs_push_to_hub(mined, capsys):
    assert main(["export", str(mined[0]), "--private"]) == 2
    assert "--private goes with --push-to-hub" in capsys.readouterr().err


def test_a_hub_that_cannot_be_reached_is_one_line_and_the_export_stays(
    mined, tmp_path, monkeypatch, capsys
):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.OfflineModeIsEnabled("Cannot reach huggingface.co\nmore")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    out = tmp_path / "hf"
    argv = ["export", str(mined[0]), "--format", "hf", "--output", str(out)]
    assert main([*argv, "--push-to-hub", "me/hf"]) == 2
    # (datasets' own progress lines may come first)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nhr")]
    assert len(err) == 1 and "pushing to the Hub dataset me/hf failed" in err[0]
    assert "OfflineModeIsEnabled: Cannot reach huggingface.co" in err[0]
    assert "Traceback" not in err[0] and (out / "nhr-export.json").exists()
