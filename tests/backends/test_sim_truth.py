"""Ground truth and the simulated judge: editor outcomes, phantoms, calibration."""

from __future__ import annotations

import functools
import json
import statistics
from importlib import resources
from string import Template

import numpy as np
import pytest

from nhr.backends.base import ChatMessage, EditRequest, GenerateRequest, TextRequest, VisionRequest
from nhr.backends.sim import SimBackend, SimBackendConfig, truth
from nhr.backends.sim.editor import OUTCOMES
from nhr.backends.sim.render import decode_pixels
from nhr.parsing import parse_scores, parse_yes_no
from nhr.taxonomy import OPERATIONS

# no errors and no small imperfections: every edit a perfect 5
ZERO_EDIT = dict.fromkeys(OUTCOMES, 0.0) | {"finish": 0.0}
ZERO_GEN = dict.fromkeys(
    ("missing_object", "duplicate_object", "garbled_object", "implausible", "roughness"), 0.0
)
PROMPT = (
    "A flat illustration of a park at midday: a red bicycle on the left, a blue cat in the "
    "middle, a small yellow lamp in the top right corner and a green vase at the bottom."
)


def template(name: str) -> str:
    return resources.files("nhr.prompts").joinpath(f"{name}.txt").read_text()


def score(
    backend: SimBackend, source: bytes, edited: bytes, instruction: str
) -> tuple[float, float]:
    text = Template(template("score")).substitute(instruction=instruction)
    [answer] = backend.ask([VisionRequest((source, edited), text)])
    assert isinstance(answer, str) and answer.startswith('{"InstructionAdherence": ')
    return parse_scores(answer)


def yes_no(backend: SimBackend, images: tuple[bytes, ...], text: str) -> bool:
    [answer] = backend.ask([VisionRequest(images, text)])
    assert isinstance(answer, str)
    return parse_yes_no(answer)


def designed(operations: list[str], count: int, seed: int = 0) -> list[tuple[str, dict]]:
    backend = SimBackend(SimBackendConfig(wrap_json=0.0))
    items = []
    for index, operation in enumerate(operations):
        text = Template(template("design")).substitute(
            topic="everyday scenes",
            styles="photo, flat illustration",
            operation=operation,
            guidance=OPERATIONS[operation].guidance,
            batch_size=count,
        )
        [answer] = backend.chat([TextRequest((ChatMessage("user", text),), seed=seed + index)])
        items += [(operation, item) for item in json.loads(answer)]
    return items


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_each_editor_outcome_is_labelled_as_such(outcome):
    generator = SimBackend(SimBackendConfig(generator_errors=ZERO_GEN))
    editor = SimBackend(SimBackendConfig(editor_errors=ZERO_EDIT | {outcome: 1.0}))
    seen = 0
    for _, item in designed(["remove_object", "change_color", "time_of_day", "add_object"], 3):
        source = generator.generate([GenerateRequest(item["prompt"], 512, 512, 1)])[0]
        for edit in item["edits"]:
            edited = editor.edit([EditRequest(source, edit["instruction"], 2)])[0]
            label = truth.label_candidate(source, edited, edit["instruction"])
            assert label == truth.CandidateTruth(False, outcome), edit["instruction"]
            seen += 1
    assert seen >= 12


def test_correct_edits_are_labelled_correct_and_score_five():
    backend = SimBackend(
        SimBackendConfig(generator_errors=ZERO_GEN, editor_errors=ZERO_EDIT, score_noise=0.0)
    )
    for _, item in designed(
        [
            "move_object",
            "resize_object",
            "replace_object",
            "change_material",
            "change_weather",
            "style_transfer",
        ],
        2,
    ):
        source = backend.generate([GenerateRequest(item["prompt"], 512, 512, 0)])[0]
        assert truth.label_source(source) == truth.SourceTruth(True, [])
        for edit in item["edits"]:
            edited = backend.edit([EditRequest(source, edit["instruction"], 0)])[0]
            assert truth.label_candidate(source, edited, edit["instruction"]).correct
            assert truth.true_scores(source, edited, edit["instruction"]) == (5.0, 5.0)
            assert score(backend, source, edited, edit["instruction"]) == (5.0, 5.0)


def test_phantom_removal_scores_high_but_is_labelled_wrong_and_its_inverse_fails():
    prompt = "A photo of a street: a blue mailbox in the middle."
    generator = SimBackend(SimBackendConfig(generator_errors=ZERO_GEN | {"missing_object": 1.0}))
    source = generator.generate([GenerateRequest(prompt, 1024, 1024, 0)])[0]
    assert truth.read_scene(source)["scene"]["objects"] == []
    assert truth.label_source(source).defects == ["missing_object"]

    judge = SimBackend(SimBackendConfig(editor_errors=ZERO_EDIT, score_noise=0.0))
    forward = "Get rid of the mailbox in the middle"
    edited = judge.edit([EditRequest(source, forward, 0)])[0]
    diff = np.abs(decode_pixels(edited).astype(int) - decode_pixels(source).astype(int)).max(axis=2)
    assert (diff > 40).sum() > 0.001 * diff.size  # the editor repainted the place: not a no-op
    assert truth.true_scores(source, edited, forward) == (5.0, 5.0)
    assert score(judge, source, edited, forward) == (5.0, 5.0)
    assert truth.label_candidate(source, edited, forward) == truth.CandidateTruth(False, "phantom")

    inverse = "Add a blue mailbox in the middle"
    adherence, _ = truth.true_scores(edited, source, inverse)
    assert adherence <= 1.5
    assert not truth.label_candidate(edited, source, inverse).correct


def test_judge_reads_multi_clause_instructions():
    generator = SimBackend(SimBackendConfig(generator_errors=ZERO_GEN))
    source = generator.generate([GenerateRequest(PROMPT, 512, 512, 0)])[0]
    judge = SimBackend(SimBackendConfig(editor_errors=ZERO_EDIT, score_noise=0.0))
    both = "Remove the cat in the middle and the lamp in the top right corner"
    edited = judge.edit([EditRequest(source, both, 0)])[0]
    names = {o["name"] for o in truth.read_scene(edited)["scene"]["objects"]}
    assert names == {"bicycle", "vase"}
    assert score(judge, source, edited, both) == (5.0, 5.0)
    one = judge.edit([EditRequest(source, "Remove the cat in the middle", 0)])[0]
    adherence, _ = score(judge, source, one, both)  # only half of what was asked
    assert adherence <= 3.5
    assert truth.label_candidate(source, one, both).error == "partial"

    mixed = "Add a red ball on the right and make it night"
    edited = judge.edit([EditRequest(source, mixed, 0)])[0]
    scene = truth.read_scene(edited)["scene"]
    assert scene["time"] == "night"
    assert any(o["name"] == "ball" and o["slot"] == "right" for o in scene["objects"])
    assert truth.label_candidate(source, edited, mixed).correct


def test_yes_no_tasks_follow_the_truth():
    generator = SimBackend(SimBackendConfig(generator_errors=ZERO_GEN))
    source = generator.generate([GenerateRequest(PROMPT, 512, 512, 0)])[0]
    judge = SimBackend(SimBackendConfig(yes_no_flip=0.0, defect_detection=1.0))
    gate = Template(template("gate")).substitute(prompt=PROMPT)
    assert yes_no(judge, (source,), gate)
    broken = SimBackend(SimBackendConfig(generator_errors=ZERO_GEN | {"garbled_object": 1.0}))
    assert not yes_no(judge, (broken.generate([GenerateRequest(PROMPT, 512, 512, 0)])[0],), gate)
    other = "A photo of a beach: a pink kite at the top."
    assert not yes_no(judge, (source,), Template(template("gate")).substitute(prompt=other))

    good = SimBackend(SimBackendConfig(editor_errors=ZERO_EDIT))
    blob = SimBackend(SimBackendConfig(editor_errors=ZERO_EDIT | {"artefact": 1.0}))
    extra = SimBackend(SimBackendConfig(editor_errors=ZERO_EDIT | {"extra_change": 1.0}))
    instruction = "Make the red bicycle on the left purple"
    unwanted = Template(template("unwanted")).substitute(instruction=instruction)
    aesthetic = template("aesthetic")
    fine = good.edit([EditRequest(source, instruction, 0)])[0]
    ugly = next(  # a plain blob, not a minor one (a minor one may still please)
        image
        for seed in range(20)
        for image in blob.edit([EditRequest(source, instruction, seed)])
        if truth.read_scene(image)["scene"]["flaw_size"]["artefact"] >= 0.5
    )
    more = extra.edit([EditRequest(source, instruction, 0)])[0]
    assert yes_no(judge, (source, fine), unwanted) and yes_no(judge, (fine,), aesthetic)
    assert not yes_no(judge, (ugly,), aesthetic)
    assert not yes_no(judge, (source, more), unwanted)
    vague = Template(template("unwanted")).substitute(instruction="Change it")
    assert not yes_no(judge, (source, fine), vague)


def test_scores_are_deterministic_and_depend_on_the_model_name():
    generator = SimBackend(SimBackendConfig())
    source = generator.generate([GenerateRequest(PROMPT, 512, 512, 0)])[0]
    edited = generator.edit([EditRequest(source, "Make it night", 0)])[0]
    readings = {}
    for model in ("validator", "prefilter"):
        judge = SimBackend(SimBackendConfig(model=model, score_noise=1.0))
        first = score(judge, source, edited, "Make it night")
        assert (
            score(
                SimBackend(SimBackendConfig(model=model, score_noise=1.0)),
                source,
                edited,
                "Make it night",
            )
            == first
        )
        readings[model] = first
    assert readings["validator"] != readings["prefilter"]


@functools.lru_cache(maxsize=1)
def _candidates(count: int) -> list[tuple[bytes, bytes, str]]:
    """Realistic attempts: designed prompts, generated sources, default editor errors."""
    backend = SimBackend(SimBackendConfig())
    pool = []
    operations = [
        "remove_object",
        "add_object",
        "change_color",
        "time_of_day",
        "replace_object",
        "change_season",
    ]
    for index, (_, item) in enumerate(designed(operations, 12, seed=11)):
        source = backend.generate([GenerateRequest(item["prompt"], 512, 512, index)])[0]
        for edit in item["edits"]:
            for seed in range(2):
                edited = backend.edit([EditRequest(source, edit["instruction"], seed)])[0]
                pool.append((source, edited, edit["instruction"]))
    assert len(pool) >= count
    return pool[:count]


@pytest.mark.parametrize(("noise", "target"), [(0.62, 0.5), (1.2, 0.95)])
def test_score_noise_is_calibrated_to_the_reference_mae(noise, target):
    judge = SimBackend(SimBackendConfig(model=f"judge-{noise}", score_noise=noise))
    errors = []
    true_values = []
    for source, edited, instruction in _candidates(300):
        adherence, _ = truth.true_scores(source, edited, instruction)
        observed, _ = score(judge, source, edited, instruction)
        errors.append(abs(observed - adherence))
        true_values.append(adherence)
    assert len(set(true_values)) >= 4  # a realistic mix, not only perfect edits
    assert abs(statistics.mean(errors) - target) <= 0.1


def test_about_half_of_generated_sources_fail_the_gate():
    backend = SimBackend(SimBackendConfig())
    failed = 0
    total = 0
    for index, (_, item) in enumerate(designed(["remove_object", "change_color"], 25, seed=5)):
        for seed in range(4):
            source = backend.generate(
                [GenerateRequest(item["prompt"], 256, 256, index * 10 + seed)]
            )
            gate = Template(template("gate")).substitute(prompt=item["prompt"])
            failed += not yes_no(backend, (source[0],), gate)
            total += 1
    assert 0.48 <= failed / total <= 0.64
