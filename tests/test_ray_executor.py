"""The Ray executor mines what the local one mines, resumes its runs and theirs, loads each
model once per actor, puts GPU roles one actor per GPU, stops on a broken backend the same way
and survives a killed worker. One Ray instance for the session (conftest's `ray_cluster`: 2 CPUs,
2 fake GPUs)."""

import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

import nhr  # noqa: E402
from helpers import signature  # noqa: E402
from nhr.calls import BrokenBackendError  # noqa: E402

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def quickstart(**models) -> dict:
    """The quickstart at 16 prompts (4 shards), with model entries updated."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["run"].update(prompts=16, shard_size=4)
    for role, values in models.items():
        data["models"][role] = {**data["models"][role], **values}
    return data


def counts(stats) -> list:
    return [(s["stage"], s["rows_in"], s["rows_out"]) for s in stats["stages"]]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local")
    return nhr.mine(quickstart(), run_dir, preflight=False)


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, ray_cluster):
    """The same config on Ray, the editor on two replicas with one (fake) GPU each."""
    run_dir = tmp_path_factory.mktemp("ray")
    config = quickstart(editor={"replicas": 2, "gpus": 1})
    return nhr.mine(config, run_dir, preflight=False, executor="ray")


def test_ray_mines_the_same_dataset_as_local(local_run, ray_run):
    assert ray_run.executor == "ray"
    assert signature(ray_run.run_dir) and signature(ray_run.run_dir) == signature(local_run.run_dir)
    assert counts(ray_run.stats) == counts(local_run.stats)
    assert ray_run.stats["dataset"]["rows"] == local_run.stats["dataset"]["rows"]


def test_each_actor_loads_its_model_once(local_run, ray_run):
    edit = next(s for s in ray_run.stats["stages"] if s["stage"] == "edit")
    assert edit["model_loads"] == {"editor": 2}  # replicas: 2
    assert ray_run.stats["model_loads"]["editor"] == 2
    assert local_run.stats["model_loads"]["editor"] == 1  # one process, one load


def test_a_gpu_role_gets_one_actor_per_gpu(ray_run):
    actors = ray_run.details["placements"]["editor"]
    assert len(actors) == 2
    assert len({actor["pid"] for actor in actors}) == 2
    gpus = [tuple(actor["gpu_ids"]) for actor in actors]
    assert all(len(ids) == 1 for ids in gpus) and len(set(gpus)) == 2
    assert all(not actor["gpu_ids"] for actor in ray_run.details["placements"]["validator"])


def damage(run_dir: Path) -> None:
    """Lose some edit and validate shards and the dataset, as a killed run would."""
    for stage, shard in (("edit", 1), ("validate", 2), ("validate", 3)):
        for suffix in (".done.json", ".parquet"):
            (run_dir / "stages" / stage / f"shard-{shard:05d}{suffix}").unlink()
    (run_dir / "stages" / "export" / "_SUCCESS.json").unlink()
    shutil.rmtree(run_dir / "dataset")


def test_ray_finishes_a_local_run(local_run, ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(local_run.run_dir, run_dir)
    damage(run_dir)
    result = nhr.mine(quickstart(), run_dir, preflight=False, executor="ray")
    assert signature(run_dir) == signature(local_run.run_dir)
    assert counts(result.stats) == counts(local_run.stats)


def test_local_finishes_a_ray_run(local_run, ray_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(ray_run.run_dir, run_dir)
    damage(run_dir)
    config = quickstart(editor={"replicas": 2, "gpus": 1})  # scaling keys are operational
    result = nhr.mine(config, run_dir, preflight=False, executor="local")
    assert signature(run_dir) == signature(local_run.run_dir)
    assert counts(result.stats) == counts(local_run.stats)


def test_a_broken_validator_stops_both_executors_alike(ray_cluster, tmp_path):
    config = quickstart(validator={"faults": {"timeout": 1.0}})
    errors = {}
    for executor in ("local", "ray"):
        with pytest.raises(BrokenBackendError) as caught:
            nhr.mine(config, tmp_path / executor, preflight=False, executor=executor)
        errors[executor] = caught.value
        assert not list((tmp_path / executor / "stages" / "validate").glob("*.done.json"))
    assert errors["ray"].stage == errors["local"].stage == "validate"
    assert errors["ray"].reason == errors["local"].reason == "timeout"
    assert str(errors["ray"]) == str(errors["local"])


def test_the_design_bar_counts_prompts_while_an_actor_designs(ray_cluster, tmp_path, capsys):
    """Design runs on an actor; its prompt count reaches the driver's bar (not "1/1")."""
    data = quickstart()
    data["run"].update(prompts=8)
    nhr.mine(data, tmp_path / "run", progress=True, preflight=False, executor="ray")
    err = capsys.readouterr().err
    assert re.search(r"^design: 8/8 prompts \(100%\), done in", err, re.M), err


def test_the_cli_stops_a_ray_run_with_exit_3(ray_cluster, tmp_path, capsys):
    from nhr.cli import main

    config = tmp_path / "broken.yaml"
    data = quickstart(validator={"faults": {"timeout": 1.0}})
    config.write_text(yaml.safe_dump(data, sort_keys=False))  # keep brief.operations' order
    argv = ["mine", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main([*argv, "--executor", "ray", "--skip-preflight"]) == 3
    assert "stage 'validate' stopped" in capsys.readouterr().err


def test_a_killed_worker_costs_only_its_unit(local_run, ray_cluster, tmp_path):
    """Kill an editor actor while the (slowed down) edit stage runs: Ray restarts it, its
    unit runs again, and the dataset is the one an undisturbed run mines."""
    run_dir = tmp_path / "run"
    config = quickstart(editor={"replicas": 2, "faults": {"latency_s": 0.05}})
    outcome = {}

    def mine() -> None:
        try:
            outcome["result"] = nhr.mine(config, run_dir, preflight=False, executor="ray")
        except BaseException as error:  # noqa: BLE001 - reported below
            outcome["error"] = error

    before = {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)}
    thread = threading.Thread(target=mine)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        if list((run_dir / "stages" / "edit").glob("shard-*.parquet")):
            break  # too late: wait for the first table of the stage only as a fallback
        editors = [
            actor
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if ":editor:" in actor["name"] and actor["name"] not in before
        ]
        if len(editors) == 2 and (run_dir / "stages" / "schedule" / "_SUCCESS.json").exists():
            time.sleep(0.5)  # the edit stage is under way: each actor holds a unit
            victim = ray.get_actor(editors[0]["name"], namespace=editors[0]["namespace"])
            ray.kill(victim, no_restart=False)
            killed = editors[0]["name"]
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed is not None, "the edit stage was never caught running"
    assert "error" not in outcome, outcome.get("error")
    assert signature(run_dir) == signature(local_run.run_dir)
    assert counts(outcome["result"].stats) == counts(local_run.stats)
    edit = next(s for s in outcome["result"].stats["stages"] if s["stage"] == "edit")
    # loads are counted from committed units: the killed actor's first load is counted only
    # if it finished a unit before it died
    assert 2 <= edit["model_loads"]["editor"] <= 3
