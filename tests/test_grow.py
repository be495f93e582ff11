"""Growing a run: `nhr mine CONFIG --run-dir RUN --prompts N` with N above the run's count
designs and mines the new shards, keeps the finished ones and exports again; the result is
the run mined at N prompts in one go."""

import json

import pytest
import yaml

import nhr
from helpers import finish, kill_at_write, signature, table_rows
from nhr.run import RunConfigError
from nhr.status import render_status

STAGES = ("design", "generate", "plausibility", "schedule", "edit", "validate", "compose")


def grow_config(small_config, prompts, **sections):
    # two operations and B=4: one design block is 8 prompts
    brief = {"operations": ["remove_object", "add_object"]}
    design = {"batch_size": 4}
    run = {"prompts": prompts, "shard_size": 4}
    return small_config(run=run, brief=brief, design=design, **sections)


def counters(run_dir):
    stats = json.loads((run_dir / "report" / "stats.json").read_text())
    keys = ("rows_in", "rows_out", "dropped", "failed", "model_calls")
    return [(s["stage"], [s[k] for k in keys]) for s in stats["stages"]]


def assert_same_run(grown, one_go):
    assert signature(grown) == signature(one_go) and signature(grown)
    for stage in STAGES:
        assert table_rows(grown, stage) == table_rows(one_go, stage), stage


@pytest.fixture(scope="module")
def one_go(tmp_path_factory, small_config):
    """The 16-prompt run mined in one go, with every job (no budget)."""
    run_dir = tmp_path_factory.mktemp("one-go")
    nhr.mine(grow_config(small_config, 16), run_dir, preflight=False)
    return run_dir


def test_growing_a_run_equals_mining_it_in_one_go(tmp_path, small_config, one_go):
    grown = tmp_path / "grown"
    nhr.mine(grow_config(small_config, 8), grown, preflight=False)
    kept = (grown / "stages" / "edit" / "shard-00000.done.json").read_bytes()
    nhr.mine(grow_config(small_config, 16), grown, preflight=False)
    assert_same_run(grown, one_go)
    # every job: the finished shards were kept, not mined again
    assert (grown / "stages" / "edit" / "shard-00000.done.json").read_bytes() == kept
    # design's calls are the new batches only: the others came from its checkpoints
    assert counters(grown)[1:] == counters(one_go)[1:]
    assert counters(grown)[0][1][:4] == counters(one_go)[0][1][:4]


def test_a_global_budget_is_the_grown_runs(tmp_path, small_config):
    """The same 60 edit jobs are drawn from the grown pool: some jobs the 8-prompt run edited
    are dropped, as in a 16-prompt run mined in one go."""
    budget = {"budget": {"edits": 60}}
    grown, one_go = tmp_path / "grown", tmp_path / "one"
    nhr.mine(grow_config(small_config, 8, schedule=budget), grown, preflight=False)
    before = {job["job_id"] for job in table_rows(grown, "schedule") if job["status"] == "ok"}
    nhr.mine(grow_config(small_config, 16, schedule=budget), grown, preflight=False)
    nhr.mine(grow_config(small_config, 16, schedule=budget), one_go, preflight=False)
    assert_same_run(grown, one_go)
    after = {job["job_id"] for job in table_rows(grown, "schedule") if job["status"] == "ok"}
    assert len(after) == 60 and before - after


def test_a_kill_while_growing_resumes_to_the_same_run(tmp_path, small_config, one_go):
    big = tmp_path / "16.yaml"
    big.write_text(yaml.safe_dump(grow_config(small_config, 16)))
    grown = tmp_path / "grown"
    nhr.mine(grow_config(small_config, 8), grown, preflight=False)
    kill_at_write(big, grown, "stages/edit/shard-00003", 1)
    status = render_status(grown)
    assert "stopped before the end" in status  # no longer "finished"
    assert "dataset: an earlier export is in" in status  # the 8-prompt export, kept till then
    finish(big, grown)
    assert_same_run(grown, one_go)


def test_a_small_run_of_a_long_cycle_grows_and_never_shrinks(tmp_path, small_config):
    """The quickstart's 16-batch cycle (12 operations, some weighted) and B = 8: a 16-prompt
    run keeps the first item of each of the block's 16 batches, a 32-prompt run the first
    two; growing gives the same run."""
    grown, one_go = tmp_path / "grown", tmp_path / "one-go"
    nhr.mine(small_config(), grown, preflight=False)
    assert len({p["operation"] for p in table_rows(grown, "design")}) == 12
    nhr.mine(small_config(run={"prompts": 32}), grown, preflight=False)
    nhr.mine(small_config(run={"prompts": 32}), one_go, preflight=False)
    assert table_rows(grown, "design") == table_rows(one_go, "design")
    assert signature(grown) == signature(one_go) and signature(grown)
    with pytest.raises(RunConfigError, match="run.prompts: 32 -> 8"):  # no shrinking
        nhr.mine(small_config(run={"prompts": 8}), grown, preflight=False)


def test_a_report_made_before_growing_is_rebuilt_when_the_run_finishes(tmp_path, small_config):
    from nhr.analysis.report import build_report

    run_dir = tmp_path / "run"
    nhr.mine(grow_config(small_config, 8), run_dir, preflight=False)
    before = build_report(run_dir, target=500)["released"]
    nhr.mine(grow_config(small_config, 16), run_dir, preflight=False)
    stats = json.loads((run_dir / "report" / "stats.json").read_text())
    grown = stats["dataset"]["rows"]
    assert grown > before
    page = (run_dir / "report" / "index.html").read_text()
    assert f"released: {grown}" in page or f"{grown:,} triplets" in page
    estimate = json.loads((run_dir / "report" / "estimate.json").read_text())
    assert estimate["target_released"] == 500 and estimate["measured_released"] == grown


def test_a_report_that_cannot_be_rebuilt_is_a_warning_not_a_failed_run(
    tmp_path, small_config, monkeypatch, caplog
):
    import nhr.analysis.report
    from nhr.analysis.report import build_report

    run_dir = tmp_path / "run"
    nhr.mine(grow_config(small_config, 8), run_dir, preflight=False)
    build_report(run_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(nhr.analysis.report, "build_report", broken)
    result = nhr.mine(grow_config(small_config, 16), run_dir, preflight=False)
    assert result.stats["dataset"]["rows"] > 0
    assert "could not be rebuilt (RuntimeError: no fonts); run `nhr report`" in caplog.text
