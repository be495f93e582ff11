"""Per-category validator thresholds (validate.thresholds) and judges on other scales
(validate.judge): the config, the validate stage's keep-rule, and the parsers."""

import pytest

from helpers import table_rows
from nhr.backends.base import CallInfo
from nhr.calibrate import wilson
from nhr.config import ConfigError, parse_config
from nhr.parsing import ParseError
from nhr.stages.base import StageContext
from nhr.stages.validate import ValidateStage, judge_prompt, parse_viescore, score_parser
from nhr.store import ImageStore


def config_with(**validate):
    return parse_config({"models": "sim", "validate": validate})


def test_thresholds_per_operation_fall_back_to_the_global_pair():
    config = config_with(thresholds={"remove_object": {"adherence": 4.9, "aesthetics": 4.5}})
    assert config.validate_.pair("remove_object") == (4.9, 4.5)
    assert config.validate_.pair("add_object") == (4.7, 4.7)
    assert config.validate_.pair(None) == (4.7, 4.7)


@pytest.mark.parametrize(
    "validate,fragment",
    [
        ({"thresholds": {"fly_away": {"adherence": 4, "aesthetics": 4}}}, "unknown operation"),
        ({"thresholds": {"add_object": {"adherence": 6, "aesthetics": 4}}}, "outside"),
        ({"thresholds": {"add_object": {"adherence": 4.5}}}, "aesthetics"),
        ({"thresholds": {"add_object": {"exclude": True, "adherence": 4.5}}}, "exclude"),
        ({"thresholds": {"add_object": {"exclude": "yes"}}}, "exclude"),
        ({"adherence_threshold": 0.5}, "validate.adherence_threshold"),
        ({"judge": {"low": 5, "high": 1}}, "below high"),
        ({"judge": {"parser": "stars"}}, "validate.judge.parser"),
    ],
)
def test_bad_threshold_settings_are_refused(validate, fragment):
    with pytest.raises(ConfigError) as info:
        config_with(**validate)
    assert fragment in str(info.value)


def test_an_excluded_category_keeps_nothing_and_says_so():
    config = config_with(thresholds={"replace_object": {"exclude": True}})
    assert config.validate_.excluded("replace_object")
    assert not config.validate_.excluded("add_object") and not config.validate_.excluded(None)
    assert config.validate_.pair("replace_object") == (float("inf"), float("inf"))
    assert config.validate_.pair("add_object") == (4.7, 4.7)


def test_the_exclusion_is_a_validate_setting():
    from nhr.config import CategoryThresholds, ValidateSection

    stage = ValidateSection.model_fields["adherence_threshold"].json_schema_extra
    assert CategoryThresholds.model_fields["exclude"].json_schema_extra == stage
    assert ValidateSection.model_fields["thresholds"].json_schema_extra == stage


def test_thresholds_follow_the_judges_scale():
    judge = {"low": 0, "high": 25, "parser": "viescore"}
    config = config_with(adherence_threshold=20, aesthetics_threshold=18.5, judge=judge)
    assert config.validate_.pair("add_object") == (20, 18.5)
    unbounded = config_with(adherence_threshold=-3.0, judge={"low": None, "high": None})
    assert unbounded.validate_.adherence_threshold == -3.0


def test_viescore_answers_are_read_as_the_minimum_of_each_pair():
    answer = 'Sure. {"reasoning": "ok", "score": [8, 9, 7, 10]}'
    assert parse_viescore(answer, 0, 10) == (8.0, 7.0)
    assert parse_viescore('{"score": [30, -2]}', 0, 25) == (25.0, 0.0)  # clamped
    for broken in ('{"score": [1, 2, 3]}', '{"score": ["a", 1]}', "no json"):
        with pytest.raises(ParseError):
            parse_viescore(broken, 0, 10)


def test_score_parser_reads_on_the_declared_scale():
    judge = config_with(judge={"low": None, "high": None}).validate_.judge
    assert score_parser(judge)('{"InstructionAdherence": 7.5, "ImageAesthetic": -1}') == (7.5, -1.0)
    default = config_with().validate_.judge
    assert score_parser(default)('{"InstructionAdherence": 7.5, "ImageAesthetic": 0}') == (5, 1)


def test_an_inline_prompt_is_used_as_given():
    assert judge_prompt("Judge: $instruction") == "Judge: $instruction"
    assert "$instruction" in judge_prompt("score")  # the packaged paper prompt


class FixedJudge:
    """Answers every request with the scores given per instruction."""

    def __init__(self, answers):
        self.answers = answers
        self.prompts = []

    def ask(self, requests):
        self.prompts += [r.prompt for r in requests]
        return [self.answers[r.prompt.rsplit(": ", 1)[-1]] for r in requests]

    def info(self):
        return CallInfo("fixed", "fixed")


def candidate(cid, operation, instruction, image):
    return {
        "candidate_id": cid,
        "operation": operation,
        "instruction": instruction,
        "source_image": image,
        "edited_image": image,
        "status": "ok",
    }


def test_validate_keeps_by_the_candidates_own_category(tmp_path):
    images = ImageStore(tmp_path)
    image = images.put(b"not read by the fixed judge")
    answers = {"a": '{"score": [8, 9, 8, 8]}', "b": '{"score": [8, 9, 8, 8]}'}
    judge = FixedJudge(answers)
    config = config_with(
        adherence_threshold=7.5,
        aesthetics_threshold=7.5,
        thresholds={"remove_object": {"adherence": 8.5, "aesthetics": 7.0}},
        judge={
            "prompt": "Rate this edit: $instruction",
            "parser": "viescore",
            "low": 0,
            "high": 10,
        },
    )
    ctx = StageContext(config, images, backends=lambda role: judge)
    edits = [candidate("1", "remove_object", "a", image), candidate("2", "add_object", "b", image)]
    prefilter = [{"candidate_id": c["candidate_id"], "status": "ok"} for c in edits]
    rows = ValidateStage().run(ctx, {"edit": edits, "prefilter": prefilter})
    by_id = {r["candidate_id"]: r for r in rows}
    assert (by_id["1"]["adherence"], by_id["1"]["aesthetics"]) == (8.0, 8.0)
    assert by_id["1"]["status"] == "dropped"  # 8.0 < remove_object's 8.5
    assert by_id["2"]["status"] == "ok"  # add_object: the global 7.5
    assert judge.prompts == ["Rate this edit: a", "Rate this edit: b"]


def test_a_run_with_category_thresholds_applies_them(tmp_path, small_config):
    import nhr

    strict = {"remove_object": {"adherence": 4.95, "aesthetics": 4.95}}
    nhr.mine(small_config(validate={"thresholds": strict}), tmp_path)
    operation = {r["candidate_id"]: r["operation"] for r in table_rows(tmp_path, "edit")}
    rows = [r for r in table_rows(tmp_path, "validate") if r["adherence"] is not None]
    kept = [r for r in rows if r["status"] == "ok"]
    assert kept, "the small run keeps something"
    for row in kept:
        low = 4.95 if operation[row["candidate_id"]] == "remove_object" else 4.7
        assert row["adherence"] >= low - 1e-6 and row["aesthetics"] >= low - 1e-6
    assert any(
        operation[r["candidate_id"]] == "remove_object"
        and r["status"] == "dropped"
        and min(r["adherence"], r["aesthetics"]) >= 4.7
        for r in rows
    ), "some removal passes 4.7 but not its own 4.95"


def test_validate_drops_an_excluded_category_with_its_reason(tmp_path):
    images = ImageStore(tmp_path)
    image = images.put(b"not read by the fixed judge")
    judge = FixedJudge({"a": '{"score": [5, 5]}', "b": '{"score": [5, 5]}'})
    config = config_with(
        thresholds={"replace_object": {"exclude": True}},
        judge={"prompt": "Rate this edit: $instruction", "parser": "viescore"},
    )
    ctx = StageContext(config, images, backends=lambda role: judge)
    edits = [candidate("1", "replace_object", "a", image), candidate("2", "add_object", "b", image)]
    prefilter = [{"candidate_id": c["candidate_id"], "status": "ok"} for c in edits]
    rows = ValidateStage().run(ctx, {"edit": edits, "prefilter": prefilter})
    by_id = {r["candidate_id"]: r for r in rows}
    assert by_id["1"]["status"] == "dropped" and by_id["1"]["reason"] == "category_excluded"
    assert (by_id["1"]["adherence"], by_id["1"]["aesthetics"]) == (5.0, 5.0)  # still scored
    assert by_id["2"]["status"] == "ok"
    assert ctx.stats.rows_out == 1


def load_benchmark(monkeypatch):
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))  # the benchmark imports its _common helpers
    spec = importlib.util.spec_from_file_location(
        "category_thresholds", folder / "category_thresholds.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_precision_gain_is_paired_over_source_images(monkeypatch):
    """Two keep-rules releasing from the same candidates share most triplets: the gain's
    interval resamples source images for both at once, so dropping truly bad triplets is a
    gain even where two independent intervals would overlap, and dropping at random is not."""
    bench = load_benchmark(monkeypatch)
    # 400 sources with 3 forward triplets each, 94 % positive; the bad ones spread evenly
    rows = [(f"s{i}", (3 * i + k) % 50 not in (0, 17, 33)) for i in range(400) for k in range(3)]
    reference = {"by_source": bench.per_source(rows)}
    same = bench.precision_gain(reference, reference)
    assert same == (0.0, 0.0, 0.0)
    # drop 12 of the 72 bad triplets: +0.01 precision, which two independent Wilson intervals
    # cannot tell apart, but the paired difference can
    bad = [i for i, (_, hit) in enumerate(rows) if not hit][::6]
    tighter = {"by_source": bench.per_source([r for i, r in enumerate(rows) if i not in bad])}
    gain, low, high = bench.precision_gain(tighter, reference)
    assert 0.005 < gain < 0.015 and 0 < low < gain < high
    assert wilson(1188 - 60, 1188)[0] < wilson(1200 - 72, 1200)[1]
    # drop a third of all triplets, good and bad alike: no measurable gain
    thinner = {"by_source": bench.per_source([r for i, r in enumerate(rows) if i % 3])}
    gain, low, high = bench.precision_gain(thinner, reference)
    assert low < 0 < high
