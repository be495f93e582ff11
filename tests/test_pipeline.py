"""End-to-end runs on the simulator: every stage, stats, determinism, faults, config changes."""

import json

import pytest

import nhr
from helpers import dataset_rows, signature, table_rows
from nhr.config import parse_config
from nhr.pipeline import stage_names
from nhr.records import OK
from nhr.run import RunConfigError


def test_every_stage_reports_in_order(mined, small_config):
    small_config_dict = small_config
    run_dir, result = mined
    stats = json.loads((run_dir / "report" / "stats.json").read_text())
    assert stats == result.stats and stats["complete"]
    names = stage_names(parse_config(small_config_dict()))
    assert [s["stage"] for s in stats["stages"]] == list(names)
    for stage in stats["stages"]:
        assert set(stage) >= {
            "rows_in",
            "rows_out",
            "dropped",
            "failed",
            "model_calls",
            "model_seconds",
        }
        assert stage["shards_done"] == stage["shards_total"] == 4
    by_name = {s["stage"]: s for s in stats["stages"]}
    assert by_name["design"]["rows_out"] == 16
    assert by_name["generate"]["rows_out"] == 32
    assert by_name["generate"]["model_calls"] >= 32
    assert by_name["plausibility"]["dropped"].get("implausible", 0) > 0
    assert by_name["select"]["rows_out"] > 0
    assert by_name["export"]["rows_out"] == stats["dataset"]["rows"] > 0


def test_rows_chain_through_the_stages(mined):
    run_dir, _ = mined
    rows = dataset_rows(run_dir)
    assert rows and len({r["sample_id"] for r in rows}) == len(rows)
    by_id = {r["sample_id"]: r for r in rows}
    for row in rows:
        assert row["kind"] in ("forward", "inverse", "composite")
        assert row["instruction_adherence"] >= 4.7 and row["aesthetics"] >= 4.7
        assert (
            row["generator_model"] == "sim:sim-t2i"
            and row["validator_model"] == "sim:sim-validator"
        )
        assert row["source_image"]["bytes"] != row["edited_image"]["bytes"]
        if row["kind"] == "forward":
            assert 1 <= row["passes"] <= row["attempts"] <= 2
            assert len(row["parents"]) == 1
        elif row["kind"] == "inverse":
            (forward_id,) = row["parents"]
            forward = by_id[forward_id]  # the backward filter keeps or drops both together
            assert row["source_image"] == forward["edited_image"]
            assert row["edited_image"] == forward["source_image"]
        else:
            assert len(row["parents"]) == 2 and " & " in row["category"]
    card = (run_dir / "dataset" / "README.md").read_text()
    assert f"**{len(rows):,} triplets.**" in card


def test_rejected_candidates_keep_scores_and_reasons(mined):
    run_dir, _ = mined
    prefilter = table_rows(run_dir, "prefilter")
    validate = table_rows(run_dir, "validate")
    dropped = [r for r in validate if r["status"] == "dropped"]
    assert dropped and all(
        r["reason"] == "below_threshold" and r["adherence"] is not None for r in dropped
    )
    reasons = {r["reason"] for r in prefilter if r["status"] == "dropped"}
    assert "low_prefilter_scores" in reasons


def test_same_config_gives_the_same_dataset(mined, tmp_path, small_config):
    run_dir, _ = mined
    nhr.mine(small_config(), tmp_path / "again")
    assert signature(tmp_path / "again") == signature(run_dir)


def test_a_different_seed_gives_a_different_dataset(mined, tmp_path, small_config):
    run_dir, _ = mined
    nhr.mine(small_config(run={"seed": 1}), tmp_path / "other")
    assert signature(tmp_path / "other") != signature(run_dir)


def test_faults_are_survived_and_counted(tmp_path, small_config):
    faults = {"exception": 0.10, "timeout": 0.05, "malformed": 0.10}
    models = {
        role: {"backend": "sim", "model": f"sim-{role}", "faults": faults}
        for role in ("designer", "generator", "gate", "editor", "prefilter", "validator")
    }
    config = small_config(
        models=models, retry={"max_attempts": 1, "unparseable_attempts": 2, "backoff_s": 0}
    )
    result = nhr.mine(config, tmp_path)
    stages = {s["stage"]: s for s in result.stats["stages"]}
    assert result.stats["complete"]
    assert sum(s["retries"] for s in stages.values()) > 0
    failed = {name: sum(s["failed"].values()) for name, s in stages.items()}
    assert failed["generate"] > 0 and failed["edit"] > 0
    assert failed["plausibility"] + failed["prefilter"] + failed["validate"] > 0
    # every failed row in a table is counted in stats.json under its stage, by reason
    for stage in ("generate", "plausibility", "edit", "validate"):
        table = table_rows(tmp_path, stage)
        reasons = {}
        for row in table:
            if row["status"] == "failed":
                reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
        assert reasons == stages[stage]["failed"], stage


def test_a_gate_that_never_answers_yes_or_no_is_counted_apart(tmp_path, small_config):
    config = small_config(
        models={"gate": {"backend": "sim", "model": "sim-gate", "faults": {"malformed": 1.0}}},
        run={"prompts": 4},
    )
    result = nhr.mine(config, tmp_path)
    gate = {s["stage"]: s for s in result.stats["stages"]}["plausibility"]
    assert gate["failed"] == {"unparseable": gate["rows_in"]} and gate["dropped"] == {}
    assert result.stats["complete"] and result.stats["dataset"]["rows"] == 0


def test_changed_config_is_refused_then_redone(mined, tmp_path, small_config):
    run_dir = tmp_path / "run"
    nhr.mine(small_config(), run_dir)
    before = signature(run_dir)
    changed = small_config(validate={"adherence_threshold": 4.2})
    with pytest.raises(RunConfigError) as info:
        nhr.mine(changed, run_dir)
    message = str(info.value)
    assert (
        "validate.adherence_threshold: 4.7 -> 4.2" in message and "--redo-from validate" in message
    )
    # an operational setting may change freely
    nhr.mine(small_config(validate={"batch_size": 3}, retry={"max_attempts": 7}), run_dir)
    result = nhr.mine(changed, run_dir, redo_from="validate")
    after = signature(run_dir)
    assert len(after) >= len(before)
    validated = [r for r in table_rows(run_dir, "validate") if r["status"] == OK]
    assert min(min(r["adherence"], r["aesthetics"]) for r in validated) < 4.7
    assert result.stats["complete"]


def test_redo_from_an_earlier_stage_than_the_change_is_allowed(tmp_path, small_config):
    run_dir = tmp_path / "run"
    nhr.mine(small_config(), run_dir)
    with pytest.raises(RunConfigError, match="--redo-from schedule"):
        nhr.mine(small_config(schedule={"seeds_per_pair": 1}), run_dir, redo_from="select")
    result = nhr.mine(
        small_config(schedule={"seeds_per_pair": 1}), run_dir, redo_from="plausibility"
    )
    # composites have no attempts of their own
    assert all(r["attempts"] == 1 for r in dataset_rows(run_dir) if r["kind"] != "composite")
    assert result.stats["complete"]


def test_budget_caps_edit_jobs(tmp_path, small_config):
    result = nhr.mine(small_config(schedule={"budget": {"edits": 20}}), tmp_path)
    stages = {s["stage"]: s for s in result.stats["stages"]}
    assert stages["schedule"]["rows_out"] == 20
    assert stages["edit"]["rows_in"] == 20
    assert stages["schedule"]["dropped"]["over_budget"] > 0
