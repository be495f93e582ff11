"""schedule.policy: adaptive: rounds with early stop, the budget, brief.target_mix,
determinism, kill-resume, and what the rest of the run sees of the rounds."""

from collections import Counter, defaultdict

import pytest
import yaml

import nhr
from helpers import finish, kill_at_write, signature, table_rows
from nhr.config import ConfigError, parse_config
from nhr.pipeline import config_changes, release_stage, stage_names
from nhr.run import RunConfigError
from nhr.scheduler import PairState, low_yield, mix_shares, mix_table, pair_states

ROUNDS = 3


def adaptive(small_config, **schedule):
    return small_config(schedule={"policy": "adaptive", "seeds_per_pair": ROUNDS, **schedule})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_config):
    """The same small world mined uniform (M = 3) and adaptive (3 rounds)."""
    root = tmp_path_factory.mktemp("adaptive")
    config = root / "adaptive.yaml"
    config.write_text(yaml.safe_dump(adaptive(small_config)))
    # both through YAML files (safe_dump sorts brief.operations, which orders the design)
    uniform = root / "uniform.yaml"
    uniform.write_text(yaml.safe_dump(small_config(schedule={"seeds_per_pair": ROUNDS})))
    return {
        "config": config,
        "uniform": (root / "uniform", nhr.mine(str(uniform), root / "uniform")),
        "adaptive": (root / "adaptive", nhr.mine(str(config), root / "adaptive")),
    }


def jobs_by_pair(run_dir):
    pairs = defaultdict(list)
    for job in table_rows(run_dir, "schedule"):
        pairs[(job["source_id"], job["edit_id"])].append(job)
    return pairs


def test_uniform_is_the_default_and_keeps_its_stages(small_config):
    config = parse_config(small_config())
    assert config.schedule.policy == "uniform"
    assert "schedule@1" not in stage_names(config)
    names = stage_names(parse_config(adaptive(small_config)))
    assert names[3:16] == (
        "schedule@1",
        "edit@1",
        "prefilter@1",
        "validate@1",
        "schedule@2",
        "edit@2",
        "prefilter@2",
        "validate@2",
        "schedule",
        "edit",
        "prefilter",
        "validate",
        "select",
    )


def test_a_pair_stops_at_its_first_pass(runs):
    run_dir, _ = runs["adaptive"]
    passed = {
        row["candidate_id"] for row in table_rows(run_dir, "validate") if row["status"] == "ok"
    }
    pairs = jobs_by_pair(run_dir)
    stopped_early = 0
    for jobs in pairs.values():
        seeds = [job["seed_index"] for job in jobs]
        assert seeds == list(range(len(jobs)))  # one seed per round, in order
        hits = [i for i, job in enumerate(jobs) if job["job_id"] in passed]
        if hits:
            assert hits == [len(jobs) - 1]  # nothing after the first pass
            stopped_early += len(jobs) < ROUNDS
        else:
            assert len(jobs) == ROUNDS  # no budget: a pair that never passed used every seed
    assert stopped_early > 0
    # the plain tables hold every round; each round's table extends the one before
    edit_1 = [r["candidate_id"] for r in table_rows(run_dir, "edit@1")]
    edit_2 = [r["candidate_id"] for r in table_rows(run_dir, "edit@2")]
    edit = [r["candidate_id"] for r in table_rows(run_dir, "edit")]
    assert len(edit_1) < len(edit_2) < len(edit)
    assert set(edit_1) < set(edit_2) < set(edit)


def test_same_pairs_released_with_fewer_editor_calls(runs):
    """Same job ids and editor seeds as uniform: a pair passes within M seeds under either
    policy, so the forward pairs are the same, reached with fewer edits."""
    (uniform_dir, uniform), (adaptive_dir, mined) = runs["uniform"], runs["adaptive"]

    def forward_pairs(run_dir):
        rows = table_rows(run_dir, "select")
        return {(r["source_id"], r["edit_id"]) for r in rows if r["status"] == "ok"}

    assert forward_pairs(adaptive_dir) == forward_pairs(uniform_dir)
    edit = {s["stage"]: s for s in mined.stats["stages"]}["edit"]
    uniform_edit = {s["stage"]: s for s in uniform.stats["stages"]}["edit"]
    assert edit["rows_in"] < uniform_edit["rows_in"]
    # stats.json sums the rounds into the plain stage and keeps each round
    assert [r["stage"] for r in edit["rounds"]] == ["edit@1", "edit@2", "edit"]
    assert edit["rows_in"] == sum(r["rows_in"] for r in edit["rounds"])
    assert edit["rows_in"] == len(table_rows(adaptive_dir, "edit"))
    assert not any("@" in s["stage"] for s in mined.stats["stages"])


@pytest.mark.slow  # the kill test below checks the same: its resumed run equals this one
def test_adaptive_is_deterministic(runs, tmp_path):
    config, (run_dir, _) = runs["config"], runs["adaptive"]
    nhr.mine(str(config), tmp_path / "again")
    assert signature(tmp_path / "again") == signature(run_dir)
    assert table_rows(tmp_path / "again", "schedule") == table_rows(run_dir, "schedule")


@pytest.mark.parametrize(
    "pattern",
    [
        "edit@2/shard-00002.done.json",  # a round-2 shard's marker
        # mid-way through a round's global schedule; in the last round
        pytest.param("schedule@2/shard-00001.parquet", marks=pytest.mark.slow),
        pytest.param("validate/shard-00001.parquet", marks=pytest.mark.slow),
    ],
)
def test_kill_during_a_round_then_resume(runs, tmp_path, pattern):
    config, (run_dir, _) = runs["config"], runs["adaptive"]
    kill_at_write(config, tmp_path / "run", pattern, 1)
    finish(config, tmp_path / "run")
    assert signature(tmp_path / "run") == signature(run_dir)


def test_budget_caps_every_round(small_config, tmp_path):
    mined = nhr.mine(adaptive(small_config, budget={"edits": 30}), tmp_path)
    jobs = table_rows(tmp_path, "schedule")
    assert sum(j["status"] == "ok" for j in jobs) == 30
    assert {j["reason"] for j in jobs if j["status"] != "ok"} == {"over_budget"}
    schedule = {s["stage"]: s for s in mined.stats["stages"]}["schedule"]
    assert schedule["rows_out"] == 30  # every round together


def test_a_config_change_invalidates_from_the_first_round(runs, small_config, tmp_path):
    old = parse_config(adaptive(small_config)).to_dict()
    new = parse_config(
        small_config(
            schedule={"policy": "adaptive", "seeds_per_pair": ROUNDS, "margin": 0.05},
            validate={"adherence_threshold": 4.5},
        )
    ).to_dict()
    assert [change[0] for change in config_changes(old, new)] == ["schedule@1", "validate@1"]
    config, (run_dir, _) = runs["config"], runs["adaptive"]
    changed = yaml.safe_load(config.read_text())
    changed["validate"]["adherence_threshold"] = 4.5
    with pytest.raises(RunConfigError, match="--redo-from validate@1"):
        nhr.mine(changed, run_dir)


def test_pair_states_margin_and_attempts():
    jobs = [
        {"job_id": "a0", "source_id": "s", "edit_id": "a", "operation": "o", "status": "ok"},
        {"job_id": "b0", "source_id": "s", "edit_id": "b", "operation": "o", "status": "ok"},
        {"job_id": "b1", "source_id": "s", "edit_id": "b", "operation": "o", "status": "ok"},
        {"job_id": "c0", "source_id": "s", "edit_id": "c", "operation": "o", "status": "dropped"},
    ]
    validations = [
        {"candidate_id": "a0", "status": "ok", "adherence": 4.8, "aesthetics": 4.7},
        {"candidate_id": "b0", "status": "dropped", "adherence": 3.0, "aesthetics": 4.0},
    ]
    states = pair_states(jobs, validations, lambda op: (4.7, 4.7))
    a, b, c = states[("s", "a")], states[("s", "b")], states[("s", "c")]
    assert (a.passed, a.attempts, b.passed, b.attempts) == (True, 1, False, 2)
    assert not a.open(3, 0.0) and a.open(3, 0.05)  # passed at the threshold, margin wants more
    assert b.open(3, 0.0) and not b.open(2, 0.0)  # seeds left, then none
    assert not c.open(3, 0.0)  # over budget: closed
    assert PairState("o").open(1, 0.0)


def test_low_yield_stops_operations_that_rarely_pass():
    counts = Counter({("easy", 0): 100, ("hard", 0): 100, ("easy", 1): 50})
    passes = Counter({("easy", 0): 40, ("hard", 0): 2, ("easy", 1): 20})
    assert low_yield(counts, passes, 0.0) == frozenset()
    assert low_yield(counts, passes, 0.1) == {("hard", 1)}


def test_mix_shares_follow_target_over_yield():
    target = {"easy": 0.5, "hard": 0.5, "off": 0.0}
    assert mix_shares(target, {}, {}) == {"easy": 0.5, "hard": 0.5, "off": 0.0}
    shares = mix_shares(target, {"easy": 1000, "hard": 1000}, {"easy": 400, "hard": 100})
    assert shares["hard"] == pytest.approx(shares["easy"] * 4, rel=0.05)  # 4x rarer: 4x spend
    assert shares["off"] == 0.0
    table = mix_table({"easy": 0.5, "hard": 0.5}, {"easy": 3, "hard": 1})
    assert [(r["operation"], r["achieved"]) for r in table] == [("easy", 0.75), ("hard", 0.25)]


def test_target_mix_is_validated(small_config):
    def check(brief, schedule, match):
        with pytest.raises(ConfigError, match=match):
            parse_config(small_config(brief=brief, schedule=schedule))

    budget = {"policy": "adaptive", "budget": {"edits": 50}}
    check({"target_mix": {"remove_object": 0.5, "add_object": 0.4}}, budget, "sum to 1")
    check({"target_mix": {"relight": 1.0}}, budget, "not in brief.operations")
    check({"target_mix": {"remove_object": 1.0}}, {"policy": "adaptive"}, "needs")
    check({"target_mix": {"remove_object": 1.0}}, {"budget": {"edits": 50}}, "needs")
    check({}, {"margin": 0.1}, "only applies to policy: adaptive")


def test_target_mix_allocates_by_share_then_measured_yield(small_config, tmp_path):
    """Round 1 splits the new-pair budget by the target (yields unknown yet); later rounds by
    target over measured yield; the budget caps the whole run; every pair of the pool has a
    row; the report compares target and achieved."""
    from nhr.analysis.report import category_yield
    from nhr.scheduler import target_mix_report
    from nhr.store import RunStore

    target = {"remove_object": 0.6, "change_color": 0.2, "time_of_day": 0.2}
    config = small_config(
        run={"prompts": 48},
        brief={"operations": list(target), "target_mix": target},
        schedule={"policy": "adaptive", "seeds_per_pair": 3, "budget": {"edits": 60}},
    )
    nhr.mine(config, tmp_path)
    first = Counter(
        j["operation"] for j in table_rows(tmp_path, "schedule@1") if j["status"] == "ok"
    )
    # a third of the budget (3 rounds) for new pairs in round 1, split by the target
    assert first == {"remove_object": 12, "change_color": 4, "time_of_day": 4}
    jobs = table_rows(tmp_path, "schedule")
    assert sum(j["status"] == "ok" for j in jobs) == 60
    started = {(j["source_id"], j["edit_id"]) for j in jobs if j["status"] == "ok"}
    never = [j for j in jobs if (j["source_id"], j["edit_id"]) not in started]
    assert never and {j["reason"] for j in never} == {"over_budget"}
    assert len({(j["source_id"], j["edit_id"]) for j in never}) == len(never)  # one row each
    store = RunStore(tmp_path)
    parsed = parse_config(config)
    table = target_mix_report(parsed, category_yield(store, release_stage(parsed)))
    assert [row["operation"] for row in table] == list(target)
    forward = Counter(r["operation"] for r in table_rows(tmp_path, "select") if r["status"] == "ok")
    assert [row["released"] for row in table] == [forward[op] for op in target]


@pytest.mark.slow
def test_target_mix_steers_the_released_mix(small_config, tmp_path):
    """The same budget spent with and without a target: with it, the share of forward
    triplets per operation lands closer to the target."""
    target = {"remove_object": 0.6, "change_color": 0.2, "time_of_day": 0.2}
    world = {"run": {"prompts": 96}, "brief": {"operations": list(target)}}
    schedule = {"policy": "adaptive", "seeds_per_pair": 3, "budget": {"edits": 100}}

    def distance(run_dir):
        rows = table_rows(run_dir, "select")
        released = Counter(r["operation"] for r in rows if r["status"] == "ok")
        return sum(abs(released[op] / sum(released.values()) - target[op]) for op in target)

    nhr.mine(small_config(schedule=schedule, **world), tmp_path / "plain")
    steered = small_config(schedule=schedule, **world)
    steered["brief"]["target_mix"] = target
    nhr.mine(steered, tmp_path / "steered")
    assert distance(tmp_path / "steered") < distance(tmp_path / "plain")


@pytest.mark.slow
def test_ray_mines_the_same_adaptive_dataset(runs, ray_cluster, tmp_path):
    """Round stages on the ray executor: the editor's pool serves every round."""
    config, (run_dir, mined) = runs["config"], runs["adaptive"]
    on_ray = nhr.mine(str(config), tmp_path, preflight=False, executor="ray")
    assert signature(tmp_path) == signature(run_dir)
    counts = [(s["stage"], s["rows_in"], s["rows_out"]) for s in on_ray.stats["stages"]]
    assert counts == [(s["stage"], s["rows_in"], s["rows_out"]) for s in mined.stats["stages"]]
