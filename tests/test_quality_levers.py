"""The quality levers: validate.samples / aggregate, validate.second_judge, select.best_of."""

import json

import pytest

from conftest import small_config_dict
from nhr.backends.base import CallInfo, PermanentBackendError
from nhr.cache import request_key
from nhr.config import ConfigError, parse_config
from nhr.parsing import ParseError
from nhr.pipeline import build_stages
from nhr.stages.base import StageContext
from nhr.stages.select import SelectStage, parse_preference
from nhr.stages.validate import ValidateStage, judge_scores, score_requests
from nhr.store import ImageStore


def config(**sections):
    return parse_config(small_config_dict(**sections))


class ScriptedJudge:
    """Answers each request with `answer(request)`; keeps every request it was sent."""

    def __init__(self, answer, name="scripted"):
        self.answer = answer
        self.name = name
        self.requests = []

    def info(self):
        return CallInfo(self.name, self.name)

    def ask(self, requests):
        self.requests.extend(requests)
        return [self.answer(request) for request in requests]


def scores(adherence, aesthetics):
    return json.dumps({"InstructionAdherence": adherence, "ImageAesthetic": aesthetics})


def candidates(images, count=3):
    source = images.put(b"source")
    return [
        {
            "candidate_id": f"c{i}",
            "source_id": "s",
            "edit_id": "e",
            "prompt_id": "p",
            "source_image": source,
            "edited_image": images.put(f"edit {i}".encode()),
            "instruction": f"Remove the cup number {i}",
            "operation": "remove_object",
            "composite": False,
            "width": 8,
            "height": 8,
            "status": "ok",
        }
        for i in range(count)
    ]


def validate(cfg, judges, edits, images):
    ctx = StageContext(cfg, images, backends=lambda role: judges[role])
    prefilter = [{"candidate_id": c["candidate_id"], "status": "ok"} for c in edits]
    rows = ValidateStage(cfg).run(ctx, {"edit": edits, "prefilter": prefilter})
    return {row["candidate_id"]: row for row in rows}, ctx


def number(request):
    return int(request.prompt.split("number ")[1].split()[0])


# -- validate.samples ----------------------------------------------------------------------------


def test_one_sample_is_the_greedy_request_and_the_rows_of_before(tmp_path):
    images = ImageStore(tmp_path)
    edits = candidates(images)
    judge = ScriptedJudge(lambda r: scores(4.5 + 0.2 * number(r), 4.8))
    cfg = config()
    rows, _ = validate(cfg, {"validator": judge}, edits, images)
    ctx = StageContext(cfg, images, backends=lambda role: judge)
    greedy = list(score_requests(ctx, edits))
    assert judge.requests == greedy  # one request per candidate, temperature 0, no seed
    assert all(r.temperature == 0 and r.seed is None for r in judge.requests)
    model = json.dumps({"backend": "scripted", "model": "scripted", "params": {}}, sort_keys=True)
    assert rows["c0"] == {
        "candidate_id": "c0",
        "adherence": 4.5,
        "aesthetics": 4.8,
        "status": "dropped",
        "reason": "below_threshold",
        "model": model,
    }
    assert rows["c1"]["status"] == "ok" and rows["c1"]["adherence"] == 4.7
    assert {"adherence_samples", "second_adherence"}.isdisjoint(rows["c1"])


@pytest.mark.parametrize(("how", "expected"), [("mean", (4.7, 4.8)), ("min", (4.5, 4.6))])
def test_k_samples_are_k_seeded_requests_aggregated(tmp_path, monkeypatch, how, expected):
    images = ImageStore(tmp_path)
    edits = candidates(images, count=1)
    # sample k reads 4.5 + 0.2 k and 5.0 - 0.2 k: the mean passes 4.7, the min does not
    judge = ScriptedJudge(lambda r: scores(4.5 + 0.2 * r.seed, 5.0 - 0.2 * r.seed))
    cfg = config(validate={"samples": 3, "aggregate": how, "sample_temperature": 0.7})
    rows, ctx = validate(cfg, {"validator": judge}, edits, images)
    assert [r.seed for r in judge.requests] == [0, 1, 2]
    assert {r.temperature for r in judge.requests} == {0.7}
    assert len({r.images for r in judge.requests}) == 1
    row = rows["c0"]
    assert (row["adherence"], row["aesthetics"]) == pytest.approx(expected)
    assert row["adherence_samples"] == pytest.approx([4.5, 4.7, 4.9])
    assert row["aesthetics_samples"] == pytest.approx([5.0, 4.8, 4.6])
    assert row["status"] == ("ok" if how == "mean" else "dropped")
    assert ctx.stats.model_calls == 3
    # each sample is its own entry of the request cache
    keys = {request_key({"backend": "b", "model": "m"}, "ask", r) for r in judge.requests}
    assert len(keys) == 3
    # `nhr calibrate --judge` / `nhr score` measure the judge as validate uses it
    monkeypatch.setattr("nhr.backends.create_backend", lambda model: judge)
    measured = judge_scores(cfg, "validator", images, edits)
    assert measured[0] == pytest.approx(expected)


def test_the_mean_is_exact_at_the_threshold(tmp_path):
    images = ImageStore(tmp_path)
    edits = candidates(images, count=1)
    judge = ScriptedJudge(lambda r: scores((4.6, 4.8)[r.seed], 4.7))
    rows, _ = validate(config(validate={"samples": 2}), {"validator": judge}, edits, images)
    assert rows["c0"]["adherence"] == 4.7 and rows["c0"]["status"] == "ok"  # not 4.699999


def test_a_failed_sample_fails_the_candidate(tmp_path):
    images = ImageStore(tmp_path)
    edits = candidates(images, count=2)

    def answer(request):
        if number(request) == 1 and request.seed == 1:
            return PermanentBackendError("refused", "no")
        return scores(5.0, 5.0)

    rows, ctx = validate(
        config(validate={"samples": 2}), {"validator": ScriptedJudge(answer)}, edits, images
    )
    assert rows["c0"]["status"] == "ok"
    assert (rows["c1"]["status"], rows["c1"]["reason"]) == ("failed", "refused")
    assert ctx.stats.failed["refused"] == 1


# -- validate.second_judge -----------------------------------------------------------------------


def second_config(**validate_settings):
    data = small_config_dict(validate={"second_judge": True, **validate_settings})
    data["models"]["second_validator"] = {"backend": "sim", "model": "other"}
    return parse_config(data)


def test_the_second_judge_must_agree_and_is_asked_only_about_passes(tmp_path):
    images = ImageStore(tmp_path)
    edits = candidates(images)
    first = ScriptedJudge(lambda r: scores(5.0, 4.0 if number(r) == 0 else 5.0))
    second = ScriptedJudge(lambda r: scores(4.9, 4.5 if number(r) == 1 else 4.9), "second")
    cfg = second_config()
    rows, ctx = validate(cfg, {"validator": first, "second_validator": second}, edits, images)
    assert [number(r) for r in second.requests] == [1, 2]  # c0 already failed the first
    assert (rows["c0"]["reason"], rows["c0"]["second_adherence"]) == ("below_threshold", None)
    assert (rows["c1"]["status"], rows["c1"]["reason"]) == (
        "dropped",
        "second_judge_below_threshold",
    )
    assert (rows["c1"]["second_adherence"], rows["c1"]["second_aesthetics"]) == (4.9, 4.5)
    assert rows["c1"]["adherence"] == 5.0  # the validator's own scores stay
    assert rows["c2"]["status"] == "ok" and '"second"' in rows["c2"]["second_model"]
    assert ctx.stats.rows_out == 1
    assert ctx.stats.dropped == {"below_threshold": 1, "second_judge_below_threshold": 1}


def test_a_failed_second_judge_fails_the_candidate(tmp_path):
    images = ImageStore(tmp_path)
    edits = candidates(images, count=1)
    first = ScriptedJudge(lambda r: scores(5.0, 5.0))
    second = ScriptedJudge(lambda r: "no JSON here")
    rows, ctx = validate(
        second_config(), {"validator": first, "second_validator": second}, edits, images
    )
    assert (rows["c0"]["status"], rows["c0"]["reason"]) == ("failed", "second_judge_unparseable")
    assert ctx.stats.rows_out == 0


def test_the_second_judge_is_a_role_of_the_validate_stage():
    stages = {s.name: s for s in build_stages(second_config())}
    assert stages["validate"].roles == ("validator", "second_validator")
    assert {s.name: s for s in build_stages(config())}["validate"].roles == ("validator",)


def test_second_judge_config_errors_and_the_sim_shorthand():
    with pytest.raises(ConfigError, match="validate.second_judge needs a second judge"):
        config(validate={"second_judge": True})
    shorthand = parse_config({"models": "sim", "validate": {"second_judge": True}})
    assert shorthand.models.second_validator.model == "sim-second-judge"
    assert shorthand.models.validator.model != shorthand.models.second_validator.model
    assert parse_config({"models": "sim"}).models.second_validator is None
    for bad, message in [
        ({"samples": 0}, "validate.samples"),
        ({"aggregate": "median"}, "validate.aggregate"),
        ({"sample_temperature": 0}, "validate.sample_temperature"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config(validate=bad)
    with pytest.raises(ConfigError, match="select.best_of"):
        config(select={"best_of": "tournament"})


def test_a_changed_lever_redoes_its_stage_and_what_follows():
    from nhr.pipeline import config_changes

    before = config().to_dict()
    changes = {
        key: stage
        for stage, key, _, _ in config_changes(before, second_config(samples=3).to_dict())
    }
    assert changes["validate.samples"] == "validate"
    assert changes["validate.second_judge"] == "validate"
    assert {changes[k] for k in changes if k.startswith("models.second_validator")} == {"validate"}
    after = config(select={"best_of": "pairwise"}).to_dict()
    assert [c[:2] for c in config_changes(before, after)] == [("select", "select.best_of")]
    # where the stage runs and in what batches changes no row
    batches = config(select={"batch_size": 2}).to_dict()
    assert config_changes(before, batches) == []


# -- select.best_of: pairwise --------------------------------------------------------------------


def select(cfg, judge, edits, validations, images=None):
    ctx = StageContext(cfg, images, backends=lambda role: judge)
    rows = SelectStage(cfg).run(ctx, {"edit": edits, "validate": validations})
    return rows, ctx


def passing(cid, adherence=4.8, aesthetics=4.8):
    return {"candidate_id": cid, "adherence": adherence, "aesthetics": aesthetics, "status": "ok"}


def shown(request, images, edits):
    """The candidate ids a comparison shows as A and B."""
    by_image = {images.get(c["edited_image"]): c["candidate_id"] for c in edits}
    return by_image[request.images[1]], by_image[request.images[2]]


def test_pairwise_asks_both_orders_and_keeps_the_most_wins(tmp_path):
    images = ImageStore(tmp_path)
    edits = candidates(images)
    quality = {"c0": 1, "c1": 3, "c2": 2}  # the judge prefers c1, whatever the order

    def answer(request):
        a, b = shown(request, images, edits)
        return json.dumps({"BetterEdit": "A" if quality[a] > quality[b] else "B"})

    judge = ScriptedJudge(answer)
    # pointwise would keep c0 (highest geometric mean)
    validations = [passing("c0", 5.0, 5.0), passing("c1"), passing("c2")]
    rows, ctx = select(config(select={"best_of": "pairwise"}), judge, edits, validations, images)
    asked = [shown(r, images, edits) for r in judge.requests]
    assert sorted(asked) == sorted(
        [("c0", "c1"), ("c1", "c0"), ("c0", "c2"), ("c2", "c0"), ("c1", "c2"), ("c2", "c1")]
    )
    assert rows[0]["candidate_id"] == "c1" and rows[0]["status"] == "ok"
    assert (rows[0]["adherence"], rows[0]["aesthetics"]) == (4.8, 4.8)
    assert ctx.stats.model_calls == 6
    assert SelectStage(config(select={"best_of": "pairwise"})).roles == ("validator",)
    assert SelectStage(config()).roles == ()


def test_a_position_bias_cancels_and_ties_break_by_score_then_id(tmp_path):
    images = ImageStore(tmp_path)
    edits = candidates(images)
    always_first = ScriptedJudge(lambda r: '{"BetterEdit": "A"}')
    cfg = config(select={"best_of": "pairwise"})
    # every candidate wins once per opponent: a tie, broken by the geometric mean ...
    validations = [passing("c0"), passing("c1", 4.9, 4.9), passing("c2")]
    rows, _ = select(cfg, always_first, edits, validations, images)
    assert rows[0]["candidate_id"] == "c1"
    # ... then by id (the highest, as pointwise does), the same on every run
    validations = [passing("c0"), passing("c1"), passing("c2")]
    chosen = {select(cfg, always_first, edits, validations, images)[0][0]["candidate_id"]}
    chosen.add(
        select(cfg, ScriptedJudge(lambda r: '{"BetterEdit": "tie"}'), edits, validations, images)[
            0
        ][0]["candidate_id"]
    )
    assert chosen == {"c2"}


def test_failed_comparisons_fall_back_to_pointwise_and_are_counted(tmp_path):
    images = ImageStore(tmp_path)
    edits = candidates(images) + [
        {**c, "candidate_id": f"d{i}", "edit_id": "e2", "instruction": "Remove the cup number 9"}
        for i, c in enumerate(candidates(images, count=2))
    ]

    def answer(request):
        if "number 9" in request.prompt:
            return PermanentBackendError("refused", "no")
        a, b = shown(request, images, edits[:3])
        return json.dumps({"BetterEdit": "A" if a == "c0" else "B" if b == "c0" else "A"})

    validations = [passing("c0"), passing("c1", 5.0, 5.0), passing("c2")]
    validations += [passing("d0", 4.7, 4.7), passing("d1", 4.9, 4.9)]
    rows, ctx = select(
        config(select={"best_of": "pairwise"}), ScriptedJudge(answer), edits, validations, images
    )
    by_edit = {row["edit_id"]: row for row in rows}
    assert by_edit["e"]["candidate_id"] == "c0"  # pairwise
    assert by_edit["e2"]["candidate_id"] == "d1"  # pointwise: its comparisons failed
    assert by_edit["e2"]["status"] == "ok"
    assert ctx.stats.failed == {"comparison_refused": 2}


def test_the_pairwise_answer_is_parsed_strictly():
    assert parse_preference('{"BetterEdit": "A"}') == "A"
    assert parse_preference('Sure. ```json\n{"BetterEdit": "b."}\n```') == "B"
    assert parse_preference('{"BetterEdit": "Tie"}') == "tie"
    for bad in ['{"BetterEdit": "C"}', '{"Better": "A"}', "A", '{"BetterEdit": 1}']:
        with pytest.raises(ParseError):
            parse_preference(bad)


# -- the levers on the simulator, end to end -----------------------------------------------------


def test_a_run_with_every_lever_is_deterministic_and_resumable(tmp_path):
    import pyarrow.parquet as pq

    import nhr

    data = small_config_dict(
        # low thresholds: groups with two passing candidates, for the comparisons
        validate={
            "samples": 2,
            "second_judge": True,
            "second_judge_rule": "mean",
            "adherence_threshold": 4.0,
            "aesthetics_threshold": 4.0,
        },
        select={"best_of": "pairwise"},
        plausibility={"samples": 2},
        invert={"enabled": False},  # the levers end at select
    )
    data["run"].update(prompts=8)
    data["models"]["second_validator"] = {
        "backend": "sim",
        "model": "sim-second",
        "judge": "tuned-gemini-2.0-flash",
    }

    def tables(run_dir):
        return {
            stage: [
                row
                for path in sorted((run_dir / "stages" / stage).glob("shard-*.parquet"))
                for row in pq.read_table(path).to_pylist()
            ]
            for stage in ("plausibility", "validate", "select")
        }

    result = nhr.mine(data, tmp_path / "run")
    first = tables(tmp_path / "run")
    scored = [r for r in first["validate"] if r["adherence_samples"] is not None]
    assert scored and all(len(r["adherence_samples"]) == 2 for r in scored)
    assert any(r["second_adherence"] is not None for r in first["validate"])
    assert any(r["status"] == "ok" for r in first["select"])
    calls = {s["stage"]: s["model_calls"] for s in result.stats["stages"]}
    assert calls["select"] > 0  # pairwise comparisons were asked
    assert all(len(r["answers"]) == 2 for r in first["plausibility"] if r["answer"])
    nhr.mine(data, tmp_path / "run", redo_from="plausibility")
    assert tables(tmp_path / "run") == first


def test_the_simulated_judge_compares_two_edits_from_what_it_sees():
    from importlib.resources import files
    from string import Template

    from nhr.backends.base import EditRequest, GenerateRequest, VisionRequest
    from nhr.backends.sim import SimBackend, SimBackendConfig

    clean = {
        k: 0.0 for k in ("missing_object", "duplicate_object", "garbled_object", "implausible")
    }
    world = SimBackend(SimBackendConfig(generator_errors=clean))
    prompt = "A flat illustration of a street: a red bicycle on the left and a blue mailbox."
    source = world.generate([GenerateRequest(prompt, 512, 512, 1)])[0]
    instruction = "Make the red bicycle green"

    def edited(**errors):
        editor = {k: 0.0 for k in ("wrong_target", "extra_change", "artefact", "partial")}
        backend = SimBackend(SimBackendConfig(editor_errors={**editor, "noop": 0.0, **errors}))
        return backend.edit([EditRequest(source, instruction, seed=0)])[0]

    good, noop = edited(), edited(noop=1.0)
    text = Template(files("nhr.prompts").joinpath("pairwise.txt").read_text())
    prompt_text = text.substitute(instruction=instruction)

    def answers(judge_params=None):
        judge = SimBackend(
            SimBackendConfig(judge="tuned-gemini-2.0-flash", judge_params=judge_params)
        )
        requests = [
            VisionRequest(images=(source, good, noop), prompt=prompt_text),
            VisionRequest(images=(source, noop, good), prompt=prompt_text),
        ]
        return [json.loads(a)["BetterEdit"] for a in judge.ask(requests)]

    assert answers() == ["A", "B"]  # the edit that was made wins in both orders
    assert answers() == answers()  # deterministic
    assert answers({"position_bias": 10.0}) == ["A", "A"]  # a strong position bias shows
    short = SimBackend(SimBackendConfig()).ask(
        [VisionRequest(images=(source, good), prompt=prompt_text)]
    )
    assert isinstance(short[0], PermanentBackendError)


# -- validate.second_judge_rule: mean ------------------------------------------------------------


def test_the_mean_rule_asks_the_second_judge_about_every_candidate_and_keeps_the_mean(tmp_path):
    images = ImageStore(tmp_path)
    edits = candidates(images)
    # c0: the validator alone would fail it (4.6), the mean passes (4.7); c1: the validator
    # passes it (4.8), the mean fails (4.6); c2: both high
    first = ScriptedJudge(lambda r: scores([4.6, 4.8, 5.0][number(r)], 5.0))
    second = ScriptedJudge(lambda r: scores([4.8, 4.4, 4.9][number(r)], 4.9), "second")
    cfg = second_config(second_judge_rule="mean")
    rows, ctx = validate(cfg, {"validator": first, "second_validator": second}, edits, images)
    assert sorted(number(r) for r in second.requests) == [0, 1, 2]  # every scored candidate
    assert (rows["c0"]["status"], rows["c0"]["adherence"], rows["c0"]["aesthetics"]) == (
        "ok",
        4.7,
        4.95,
    )
    assert rows["c0"]["adherence_samples"] == [4.6]  # the validator's own reading stays
    assert rows["c0"]["second_adherence"] == 4.8
    assert (rows["c1"]["status"], rows["c1"]["reason"]) == ("dropped", "below_threshold")
    assert rows["c2"]["status"] == "ok"
    assert ctx.stats.rows_out == 2 and ctx.stats.dropped == {"below_threshold": 1}


def test_the_mean_rule_needs_the_second_judge_and_a_failed_second_judge_fails(tmp_path):
    with pytest.raises(ConfigError, match="second_judge_rule: mean needs validate.second_judge"):
        config(validate={"second_judge_rule": "mean"})
    with pytest.raises(ConfigError, match="validate.second_judge_rule"):
        second_config(second_judge_rule="average")
    images = ImageStore(tmp_path)
    edits = candidates(images, count=2)
    first = ScriptedJudge(lambda r: scores(5.0, 5.0) if number(r) else "no JSON here")
    second = ScriptedJudge(lambda r: "no JSON" if number(r) else scores(5.0, 5.0), "second")
    cfg = second_config(second_judge_rule="mean")
    rows, ctx = validate(cfg, {"validator": first, "second_validator": second}, edits, images)
    assert {number(r) for r in second.requests} == {1}  # c0 failed with the validator
    assert (rows["c0"]["status"], rows["c0"]["reason"]) == ("failed", "unparseable")
    assert (rows["c1"]["status"], rows["c1"]["reason"]) == ("failed", "second_judge_unparseable")
    from nhr.pipeline import config_changes

    changes = config_changes(second_config().to_dict(), cfg.to_dict())
    assert [c[:2] for c in changes] == [("validate", "validate.second_judge_rule")]


# -- plausibility.samples: look at each source K times -------------------------------------------


def gate(cfg, answer, tmp_path, count=3):
    """The plausibility stage over `count` sources s0, s1, ... with a scripted gate that
    answers `answer(request, source_id)`."""
    from nhr.stages.plausibility import PlausibilityStage

    images = ImageStore(tmp_path)
    generate = [
        {
            "source_id": f"s{i}",
            "prompt_id": "p",
            "image": images.put(f"source {i}".encode()),
            "status": "ok",
        }
        for i in range(count)
    ]
    by_image = {images.get(g["image"]): g["source_id"] for g in generate}
    judge = ScriptedJudge(lambda request: answer(request, by_image[request.images[0]]))
    ctx = StageContext(cfg, images, backends=lambda role: judge)
    design = [{"prompt_id": "p", "prompt": "A cup on a table"}]
    rows = PlausibilityStage().run(ctx, {"design": design, "generate": generate})
    return {row["source_id"]: row for row in rows}, judge, ctx


def test_one_gate_sample_is_the_greedy_request_and_the_rows_of_before(tmp_path):
    rows, judge, _ = gate(config(), lambda request, source: "Yes", tmp_path)
    assert [(r.temperature, r.seed) for r in judge.requests] == [(0.0, None)] * 3
    assert all(row["status"] == "ok" and "answers" not in row for row in rows.values())


@pytest.mark.parametrize("reject, passed", [("any_no", {"s0"}), ("majority_no", {"s0", "s1"})])
def test_k_gate_samples_are_seeded_and_a_no_fails_the_source(tmp_path, reject, passed):
    noes = {"s0": set(), "s1": {1}, "s2": {0, 2}}  # s0: yes yes yes; s1: one no; s2: two
    cfg = config(plausibility={"samples": 3, "reject": reject, "sample_temperature": 0.7})
    rows, judge, ctx = gate(
        cfg, lambda request, source: "No" if request.seed in noes[source] else "Yes", tmp_path
    )
    assert [(r.temperature, r.seed) for r in judge.requests] == [(0.7, k) for k in (0, 1, 2)] * 3
    assert {s for s, row in rows.items() if row["status"] == "ok"} == passed
    assert rows["s1"]["answers"] == ["Yes", "No", "Yes"]
    no = rows["s2"]
    assert (no["status"], no["reason"], no["answer"]) == ("dropped", "implausible", "No")
    assert ctx.stats.rows_out == len(passed)


def test_a_failed_gate_sample_fails_the_source_and_bad_settings_are_errors(tmp_path):
    from nhr.pipeline import config_changes

    cfg = config(plausibility={"samples": 2})
    rows, _, ctx = gate(
        cfg, lambda request, source: "maybe" if request.seed == 1 else "Yes", tmp_path, count=1
    )
    assert (rows["s0"]["status"], rows["s0"]["reason"]) == ("failed", "unparseable")
    assert ctx.stats.rows_out == 0
    for bad, message in [
        ({"samples": 0}, "plausibility.samples"),
        ({"reject": "all_no"}, "plausibility.reject"),
        ({"sample_temperature": 0}, "plausibility.sample_temperature"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config(plausibility=bad)
    changes = config_changes(config().to_dict(), cfg.to_dict())
    assert [c[:2] for c in changes] == [("plausibility", "plausibility.samples")]


def test_the_simulated_gate_looks_again_partly_afresh():
    """A sampled look keeps most of the greedy answer's opinion (gate_sample_share is drawn
    afresh), and two gate models share gate_shared of their misses; with neither, the greedy
    answer is one draw per request and defect, as before these settings existed."""
    from nhr.backends.sim import SimBackendConfig
    from nhr.backends.sim.vision import _notices
    from nhr.backends.sim.world import uniform

    def rate(config, sample=None, other=None, keys=range(4000)):
        looks = []
        for k in keys:
            key, image = f"request {k}".encode(), f"image {k}".encode()
            seen = _notices(config, key, sample and sample + key, image, 0, "garbled_object")
            if other is not None:
                seen = (seen, _notices(other, key, None, image, 0, "garbled_object"))
            looks.append(seen)
        return looks

    plain = SimBackendConfig(model="gate-a")
    greedy = rate(plain)
    assert greedy == [
        uniform("gate", "gate-a", f"request {k}".encode(), 0, "garbled_object") < 0.8
        for k in range(4000)
    ]
    sampled = [rate(plain, sample=f"seed {s}".encode()) for s in range(3)]
    missed = [k for k, seen in enumerate(greedy) if not seen]
    caught = sum(any(look[k] for look in sampled) for k in missed) / len(missed)
    assert 0.2 < caught < 0.8  # looking again finds some of the misses, not all
    assert 0.75 < sum(sampled[0]) / 4000 < 0.85  # each look alone is as good as the greedy one
    frozen = SimBackendConfig(model="gate-a", gate_sample_share=0.0)
    assert rate(frozen, sample=b"seed 0") == greedy

    def both_missed(shared):
        first = SimBackendConfig(model="gate-a", gate_shared=shared)
        second = SimBackendConfig(model="gate-b", gate_shared=shared)
        pairs = rate(first, other=second)
        return sum(not a and not b for a, b in pairs) / len(pairs)

    assert both_missed(0.0) < 0.06 < both_missed(0.6)  # independent: 0.2 x 0.2 = 0.04
