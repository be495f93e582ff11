"""The simulator's LLM and grammar: design batches, inversions, prompt and instruction parsing."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections import Counter
from importlib import resources
from string import Template

import pytest

from nhr.backends.base import ChatMessage, GenerateRequest, TextRequest
from nhr.backends.sim import SUPPORTED_OPERATIONS, SimBackend, SimBackendConfig, truth
from nhr.backends.sim.grammar import Clause, PromptSpec, Ref, parse_instruction, parse_prompt
from nhr.backends.sim.llm import _sample_spec, write_prompt
from nhr.backends.sim.world import (
    BACKGROUNDS,
    DEFAULT_SEASON,
    DEFAULT_TIME,
    DEFAULT_WEATHER,
    STYLES,
    Scene,
)
from nhr.parsing import extract_json
from nhr.taxonomy import OPERATIONS

BANNED = re.compile(r"\b(back|undo|restore|revert)", re.IGNORECASE)


def template(name: str) -> str:
    return resources.files("nhr.prompts").joinpath(f"{name}.txt").read_text()


def design(backend: SimBackend, operation: str, count: int, seed: int) -> str:
    text = Template(template("design")).substitute(
        topic="everyday scenes, objects and places",
        styles="photo, flat illustration, anime, oil painting, sketch",
        operation=operation,
        guidance=OPERATIONS[operation].guidance,
        batch_size=count,
    )
    [answer] = backend.chat([TextRequest((ChatMessage("user", text),), temperature=1.0, seed=seed)])
    assert isinstance(answer, str)
    return answer


def invert(backend: SimBackend, prompt: str, instruction: str, seed: int = 0) -> str:
    text = Template(template("invert")).substitute(prompt=prompt, instruction=instruction)
    [answer] = backend.chat([TextRequest((ChatMessage("user", text),), seed=seed)])
    assert isinstance(answer, str)
    return answer


@pytest.mark.parametrize("operation", SUPPORTED_OPERATIONS)
def test_design_returns_n_valid_items(operation):
    backend = SimBackend(SimBackendConfig(wrap_json=0.0))
    items = json.loads(design(backend, operation, 7, seed=1))
    assert len(items) == 7
    for item in items:
        assert isinstance(item["prompt"], str) and len(item["prompt"].split()) >= 8
        assert 1 <= len(item["edits"]) <= 6
        for edit in item["edits"]:
            assert set(edit) == {"instruction", "composite"}
            clauses = parse_instruction(edit["instruction"])
            assert clauses, edit["instruction"]
            assert {c.op for c in clauses} == {operation}


def test_removal_batches_follow_the_published_rules():
    backend = SimBackend(SimBackendConfig(wrap_json=0.0))
    items = json.loads(design(backend, "remove_object", 20, seed=4))
    counts = Counter()
    for item in items:
        named = parse_prompt(item["prompt"]).objects
        edits = item["edits"]
        singles = [e for e in edits if not e["composite"]]
        counts[len(named)] += 1
        assert len(singles) == len(named)  # one removal per named object
        assert not any(
            re.search(r"\b(first|second|third|fourth|fifth)\b", e["instruction"]) for e in edits
        )  # spatial references, never ordinals
        if len(named) >= 2:
            assert edits[-1]["composite"] and sum(e["composite"] for e in edits) == 1
            assert len(parse_instruction(edits[-1]["instruction"])) == len(named)
        else:
            assert not any(e["composite"] for e in edits)
    assert counts == Counter({1: 4, 2: 4, 3: 4, 4: 4, 5: 4})  # spread evenly over 1..5


def test_design_sometimes_wraps_json_like_a_real_llm():
    backend = SimBackend(SimBackendConfig())
    answers = [design(backend, "change_color", 2, seed=s) for s in range(60)]
    wrapped = [a for a in answers if not a.lstrip().startswith("[")]
    assert 4 <= len(wrapped) <= 24  # about 20 %
    for answer in answers:
        assert len(extract_json(answer, expect=list)) == 2


def test_design_of_an_unsupported_operation_is_an_empty_array():
    backend = SimBackend(SimBackendConfig(wrap_json=0.0))
    assert json.loads(design(backend, "change_haircut", 5, seed=0)) == []


def test_generator_reads_its_own_prompts_back():
    rnd = random.Random(7)
    backend = SimBackend(
        SimBackendConfig(
            generator_errors={
                "missing_object": 0,
                "duplicate_object": 0,
                "garbled_object": 0,
                "implausible": 0,
            }
        )
    )
    for index in range(60):
        spec = _sample_spec(rnd, 1 + index % 5, list(BACKGROUNDS), list(STYLES))
        prompt = write_prompt(spec, rnd)
        assert _with_defaults(parse_prompt(prompt)) == spec, prompt
        png = backend.generate([GenerateRequest(prompt, 512, 512, index)])[0]
        scene = Scene.from_dict(truth.read_scene(png)["scene"])
        shown = {(o.name, o.color, o.material, o.size, o.slot) for o in scene.objects}
        asked = {(o.name, o.color, o.material, o.size, o.slot) for o in spec.objects}
        assert shown == asked
        assert (scene.background, scene.time, scene.season, scene.weather, scene.style) == (
            spec.background,
            spec.time,
            spec.season,
            spec.weather,
            spec.style,
        )


def _with_defaults(spec: PromptSpec) -> PromptSpec:
    """What the generator assumes where a prompt is silent (plain, medium, day, summer...)."""
    objects = tuple(
        dataclasses.replace(o, material=o.material or "plain", size=o.size or "medium")
        for o in spec.objects
    )
    return dataclasses.replace(
        spec,
        time=spec.time or DEFAULT_TIME,
        season=spec.season or DEFAULT_SEASON,
        weather=spec.weather or DEFAULT_WEATHER,
        objects=objects,
    )


def test_unreadable_prompt_gives_a_flagged_default_scene():
    png = SimBackend(SimBackendConfig()).generate(
        [GenerateRequest("Something entirely abstract and undefined.", 256, 256, 0)]
    )[0]
    record = truth.read_scene(png)
    assert record["scene"]["unparsed"] and record["scene"]["objects"]
    assert "off_prompt" in truth.label_source(png).defects


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Get rid of the mailbox in the middle",
            [Clause("remove_object", Ref("mailbox", slot="center"))],
        ),
        (
            "Can you remove the red cat on the left?",
            [Clause("remove_object", Ref("cat", color="red", slot="left"))],
        ),
        (
            "Remove the cat and the lamp",
            [Clause("remove_object", Ref("cat")), Clause("remove_object", Ref("lamp"))],
        ),
        (
            "Add a red bicycle on the left and make it night",
            [
                Clause("add_object", Ref("bicycle", color="red", slot="left")),
                Clause("time_of_day", changes=(("time", "night"),)),
            ],
        ),
        (
            "Make the red bicycle green",
            [Clause("change_color", Ref("bicycle", color="red"), value="green")],
        ),
        (
            "Change the colour of the vase on the right to blue",
            [Clause("change_color", Ref("vase", slot="right"), value="blue")],
        ),
        (
            "Replace the ball at the top with a green clock",
            [Clause("replace_object", Ref("ball", slot="top"), value="clock", new_color="green")],
        ),
        (
            "Move the cat on the left over to the top right corner",
            [Clause("move_object", Ref("cat", slot="left"), value="top right")],
        ),
        (
            "Make the small vase much bigger",
            [Clause("resize_object", Ref("vase", size="small"), value="+1")],
        ),
        (
            "Give the umbrella a checkered pattern",
            [Clause("change_material", Ref("umbrella"), value="checkered")],
        ),
        ("Make the chair out of wood", [Clause("change_material", Ref("chair"), value="wooden")]),
        ("Turn it into a winter scene", [Clause("change_season", changes=(("season", "winter"),))]),
        ("Add thick fog", [Clause("change_weather", changes=(("weather", "fog"),))]),
        (
            "Set the scene in a kitchen",
            [Clause("change_background", changes=(("background", "kitchen"),))],
        ),
        (
            "Render it as a pencil sketch",
            [Clause("style_transfer", changes=(("style", "sketch"),))],
        ),
        ("Change it", []),
    ],
)
def test_instruction_phrasings(text, expected):
    assert parse_instruction(text) == expected


def test_inversion_restores_the_detail_of_the_original_description():
    backend = SimBackend(
        SimBackendConfig(inversion_errors={"vague": 0, "wrong": 0, "banned_word": 0})
    )
    prompt = (
        "A photo of a kitchen at night: a red bicycle on the left and a small blue "
        "striped mailbox in the middle."
    )
    added = invert(backend, prompt, "Get rid of the mailbox in the middle")
    assert parse_instruction(added) == [
        Clause(
            "add_object",
            Ref("mailbox", color="blue", material="striped", size="small", slot="center"),
        )
    ]
    assert parse_instruction(invert(backend, prompt, "Add a green ball at the top")) == [
        Clause("remove_object", Ref("ball", color="green", slot="top"))
    ]
    [recolour] = parse_instruction(invert(backend, prompt, "Make the red bicycle yellow"))
    assert recolour.op == "change_color" and recolour.value == "red"
    [timing] = parse_instruction(invert(backend, prompt, "Make it morning"))
    assert timing.changes == (("time", "night"),)
    both = parse_instruction(invert(backend, prompt, "Remove the bicycle and the mailbox"))
    assert [c.op for c in both] == ["add_object", "add_object"]


def test_inversions_are_never_empty_and_banned_words_come_only_at_their_rate():
    rnd = random.Random(3)
    backend = SimBackend(
        SimBackendConfig(inversion_errors={"vague": 0.05, "wrong": 0.03, "banned_word": 0.1})
    )
    clean = SimBackend(
        SimBackendConfig(inversion_errors={"vague": 0.0, "wrong": 0.0, "banned_word": 0.0})
    )
    banned = 0
    total = 0
    for operation in SUPPORTED_OPERATIONS:
        items = json.loads(design(SimBackend(SimBackendConfig(wrap_json=0)), operation, 6, 2))
        for item in items:
            for edit in item["edits"]:
                seed = rnd.randrange(1 << 30)
                answer = invert(backend, item["prompt"], edit["instruction"], seed)
                assert answer.strip()
                banned += bool(BANNED.search(answer))
                total += 1
                correct = invert(clean, item["prompt"], edit["instruction"], seed)
                assert correct.strip() and not BANNED.search(correct), correct
    assert total > 100
    assert 0.04 <= banned / total <= 0.18
