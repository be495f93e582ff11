"""Mining from the user's photos (sources.kind: images), end to end on the simulator: a folder
of simulated photos with bad files among them, the counted reasons, provenance in the export,
determinism, resume from checkpoints, and the config rules of the describer role."""

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nhr
from conftest import small_config_dict
from helpers import dataset_rows, signature, table_rows
from nhr.backends.sim.photos import photo_png, write_bad_files, write_photo_folder
from nhr.backends.sim.truth import label_candidate
from nhr.config import ConfigError, parse_config
from nhr.pipeline import build_stages
from nhr.stages.base import StageContext
from nhr.stages.photo_design import PhotoDesignStage
from nhr.store import ImageStore

BUCKETS = [[96, 72], [72, 96], [80, 80]]


def photo_config(path, **sections) -> dict:
    data = small_config_dict(
        sources={"kind": "images", "path": str(path), "min_side": 48, "edits_per_photo": 3},
        generate={"buckets": BUCKETS},
        brief={"operations": ["remove_object", "change_color", "time_of_day"]},
        schedule={"seeds_per_pair": 1},
        **sections,
    )
    data["models"]["describer"] = {"backend": "sim", "model": "sim-vlm-7b"}
    del data["models"]["generator"]  # a photo run never calls one, so it needs none
    return data


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos")
    write_photo_folder(path, 6, long_side=160)
    return path, write_bad_files(path, long_side=160)


@pytest.fixture(scope="module")
def photo_run(photo_folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("photo-run")
    return run_dir, nhr.mine(photo_config(photo_folder[0]), run_dir, preflight=False)


def test_every_bad_file_is_counted_with_its_reason(photo_folder, photo_run):
    _, expected = photo_folder
    run_dir, result = photo_run
    sources = {row["origin_file"]: row for row in table_rows(run_dir, "generate")}
    assert set(sources) == set(expected) | {f"photo-{i:05d}.png" for i in range(6)}
    for name, reason in expected.items():
        assert sources[name]["reason"] == reason, name
        assert sources[name]["status"] == ("dropped" if reason else "ok"), name
    rejected = Counter(reason for reason in expected.values() if reason)
    stages = {stage["stage"]: stage for stage in result.stats["stages"]}
    for stage in ("design", "generate"):
        assert {k: stages[stage]["dropped"].get(k) for k in rejected} == dict(rejected)
    assert stages["generate"]["rows_out"] == len(sources) - sum(rejected.values())
    # every accepted photo was described, and the describer's text (and name) is recorded
    for row in table_rows(run_dir, "design"):
        assert (row["prompt"] is None) == (row["source_image"] is None)
        assert (row["describer_model"] is None) == (row["source_image"] is None)


def test_released_triplets_carry_provenance_and_the_truth(photo_folder, photo_run):
    path, expected = photo_folder
    run_dir, _ = photo_run
    rows = dataset_rows(run_dir)
    assert rows
    assert {r["source_origin"] for r in rows} == {str(path)}
    assert {r["source_file"] for r in rows} <= {f"photo-{i:05d}.png" for i in range(6)} | {
        name for name, reason in expected.items() if reason is None
    }
    assert all(r["source_row"] is None and r["source_license"] is None for r in rows)
    # the simulator's truth survived the ingest: released forward edits are judged against it
    images = ImageStore(run_dir / "images")
    forwards = [t for t in table_rows(run_dir, "compose") if t["kind"] == "forward"]
    released = [t for t in forwards if t["status"] == "ok"]
    correct = [
        label_candidate(
            images.get(t["source_image"]), images.get(t["edited_image"]), t["instruction"]
        ).correct
        for t in released
    ]
    # (a run this small releases a handful: precision is measured on larger runs, README)
    assert released and any(correct)


def test_a_photo_run_is_deterministic(photo_folder, photo_run, tmp_path):
    run_dir, _ = photo_run
    again = tmp_path / "again"
    nhr.mine(photo_config(photo_folder[0]), again, preflight=False)
    assert signature(again) == signature(run_dir)
    assert table_rows(again, "design") == table_rows(run_dir, "design")


class Counting:
    """The simulator, counting the requests it answers."""

    def __init__(self):
        from nhr.backends.sim import SimBackend
        from nhr.backends.sim.config import SimBackendConfig

        self.sim = SimBackend(SimBackendConfig())
        self.asked = 0

    def info(self):
        return self.sim.info()

    def ask(self, requests):
        self.asked += len(requests)
        return self.sim.ask(requests)

    def chat(self, requests):
        self.asked += len(requests)
        return self.sim.chat(requests)


def test_a_finished_shard_is_never_asked_again(photo_folder, tmp_path):
    config = parse_config(photo_config(photo_folder[0]))
    saved = {}

    def run(backend):
        ctx = StageContext(
            config=config,
            images=ImageStore(tmp_path / "images"),
            backends=lambda role: backend,
            load_checkpoint=saved.get,
            save_checkpoint=saved.__setitem__,
        )
        return list(PhotoDesignStage().run(ctx)), ctx.stats

    first, second = Counting(), Counting()
    rows, stats = run(first)
    assert first.asked > 0 and len(saved) == len(rows)
    rows_again, stats_again = run(second)
    assert second.asked == 0
    assert rows_again == rows and stats_again.dropped == stats.dropped
    # a checkpoint made for other files (the folder changed) is not used
    saved["shard-00000"]["keys"] = ["another-file.png"]
    third = Counting()
    assert run(third)[0] == rows and third.asked > 0


def test_a_dataset_with_a_licence_column(tmp_path):
    images = [photo_png(0, i, long_side=160) for i in range(4)]
    table = pa.table(
        {
            "image": [{"bytes": data, "path": None} for data in images],
            "license": ["cc-by-4.0", "cc0-1.0", "cc-by-4.0", "cc0-1.0"],
        }
    )
    pq.write_table(table, tmp_path / "photos.parquet")
    run_dir = tmp_path / "run"
    nhr.mine(photo_config(tmp_path / "photos.parquet"), run_dir, preflight=False)
    rows = dataset_rows(run_dir)
    assert rows
    licences = ["cc-by-4.0", "cc0-1.0", "cc-by-4.0", "cc0-1.0"]
    assert all(r["source_license"] == licences[r["source_row"]] for r in rows)


def test_the_describer_is_needed_only_for_photos(tmp_path):
    generated = parse_config(small_config_dict())
    assert generated.models.describer is None and generated.to_dict()["models"]["describer"] is None
    assert [type(s).__name__ for s in build_stages(generated)][:2] == [
        "DesignStage",
        "GenerateStage",
    ]
    without_generator = small_config_dict()
    del without_generator["models"]["generator"]
    with pytest.raises(ConfigError, match="models.generator is missing"):
        parse_config(without_generator)
    data = photo_config(tmp_path)
    del data["models"]["describer"]
    with pytest.raises(ConfigError, match="models.describer"):
        parse_config(data)
    shorthand = parse_config({"models": "sim", "sources": {"kind": "images", "path": "x"}})
    assert shorthand.models.describer is not None
    assert [type(s).__name__ for s in build_stages(shorthand)][:2] == [
        "PhotoDesignStage",
        "PhotoSourceStage",
    ]
    with pytest.raises(ConfigError, match="needs a path"):
        parse_config({"models": "sim", "sources": {"kind": "images"}})
    with pytest.raises(ConfigError, match="only with kind: images"):
        parse_config({"models": "sim", "sources": {"sample": 4}})


def test_a_deleted_photo_is_made_again(photo_folder, photo_run, tmp_path):
    """`nhr mine` repairs the image store: a photo it lost is normalised again from its file
    (the checkpoint of its shard is not trusted without it), and the run comes back whole."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(photo_run[0], run_dir)
    before = signature(run_dir)
    photo = next(r["source_image"] for r in table_rows(run_dir, "design") if r["source_image"])
    (run_dir / "images" / photo[:2] / f"{photo}.png").unlink()
    nhr.mine(photo_config(photo_folder[0]), run_dir, preflight=False)
    assert (run_dir / "images" / photo[:2] / f"{photo}.png").exists()
    assert signature(run_dir) == before


def test_killed_while_designing_resumes_to_the_same_dataset(photo_folder, photo_run, tmp_path):
    """Killed while writing the checkpoint of the second shard of photos."""
    import yaml

    from helpers import finish, kill_at_write

    config = tmp_path / "photos.yaml"
    config.write_text(yaml.safe_dump(photo_config(photo_folder[0])))
    run_dir = tmp_path / "run"
    kill_at_write(config, run_dir, "design/parts/shard-", 2)
    finish(config, run_dir)
    assert signature(run_dir) == signature(photo_run[0])
