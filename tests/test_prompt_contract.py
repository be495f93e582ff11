"""Contract between the prompt templates (nhr/prompts) and the simulator.

The simulator recognises which task it answers from the request text. Every template is
rendered here the way the stages render it (with their own request builders, or by running
the stage against a recording backend) and must be recognised as its task: rewording a
template so the simulator no longer knows it fails here instead of silently turning its
answers into "unknown".
"""

import io
from importlib.resources import files

import numpy as np
import pytest
from PIL import Image

from conftest import small_config_dict
from nhr.backends.base import CallInfo, PermanentBackendError, TextRequest
from nhr.backends.sim import SimBackend, llm, tasks, vision
from nhr.backends.sim.config import SimBackendConfig
from nhr.config import parse_config
from nhr.stages import validate
from nhr.stages.base import StageContext
from nhr.stages.design import design_request
from nhr.stages.invert import inverse_request
from nhr.stages.plausibility import PlausibilityStage
from nhr.stages.prefilter import PrefilterStage
from nhr.stages.select import SelectStage
from nhr.stages.validate import score_requests
from nhr.store import ImageStore

PROMPT = "A photo of a kitchen: a red cup on the table and a blue chair on the left."
INSTRUCTION = "Remove the red cup on the table"


class Recorder:
    """A backend that keeps every request it is sent and answers none of them."""

    def __init__(self) -> None:
        self.requests: list = []

    def info(self) -> CallInfo:
        return CallInfo(backend="recorder", model="recorder", params={})

    def chat(self, requests):
        return self._record(requests)

    def ask(self, requests):
        return self._record(requests)

    def _record(self, requests):
        self.requests.extend(requests)
        return [PermanentBackendError("recorded")] * len(requests)


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def context(tmp_path, recorder: Recorder, **sections) -> StageContext:
    config = parse_config(small_config_dict(**sections))
    return StageContext(
        config=config, images=ImageStore(tmp_path / "images"), backends=lambda role: recorder
    )


def candidate(ctx: StageContext) -> dict:
    return {
        "candidate_id": "c0",
        "source_id": "s0",
        "edit_id": "e0",
        "source_image": ctx.images.put(png(10)),
        "edited_image": ctx.images.put(png(200)),
        "instruction": INSTRUCTION,
        "operation": "remove_object",
        "status": "ok",
    }


def render_design(tmp_path) -> list:
    ctx = context(tmp_path, Recorder())
    cycle = len(ctx.config.brief.operation_cycle())
    return [design_request(ctx, index) for index in range(cycle)]


def render_invert(tmp_path) -> list:
    ctx = context(tmp_path, Recorder())
    return [inverse_request(ctx, PROMPT, INSTRUCTION, "t0", attempt) for attempt in (0, 1)]


def render_score(tmp_path) -> list:
    ctx = context(tmp_path, Recorder())
    requests = score_requests(ctx, [candidate(ctx)])
    return [requests[index] for index in range(len(requests))]


def render_gate(tmp_path) -> list:
    recorder = Recorder()
    ctx = context(tmp_path, recorder)
    source = {"source_id": "s0", "prompt_id": "p0", "image": ctx.images.put(png(10))}
    PlausibilityStage().run(
        ctx,
        {
            "design": [{"prompt_id": "p0", "prompt": PROMPT}],
            "generate": [{**source, "status": "ok"}],
        },
    )
    return recorder.requests


def render_prefilter(task: str):
    """The prefilter's request for one of its VLM checks, with only that check enabled."""
    flags = {"score": "score", "unwanted": "unwanted_changes", "aesthetic": "aesthetics"}

    def render(tmp_path) -> list:
        recorder = Recorder()
        settings = {flag: flag == flags[task] for flag in flags.values()}
        ctx = context(tmp_path, recorder, prefilter={**settings, "low_level": {"enabled": False}})
        PrefilterStage().run(ctx, {"edit": [candidate(ctx)]})
        return recorder.requests

    return render


def render_describe(tmp_path) -> list:
    from nhr.stages.photo_design import describe_request

    ctx = context(tmp_path, Recorder())
    return [describe_request(ctx, png(10), "photo-00000.png")]


def render_design_image(tmp_path) -> list:
    from nhr.stages.photo_design import design_request as photo_design_request

    ctx = context(tmp_path, Recorder())
    return [photo_design_request(ctx, PROMPT, "photo-00000.png")]


def render_pairwise(tmp_path) -> list:
    """select.best_of: pairwise compares two passing candidates of a pair, in both orders."""
    recorder = Recorder()
    ctx = context(tmp_path, recorder, select={"best_of": "pairwise"})
    first = {**candidate(ctx), "prompt_id": "p0", "composite": False, "width": 16, "height": 16}
    second = {**first, "candidate_id": "c1", "edited_image": ctx.images.put(png(120))}
    scores = [
        {"candidate_id": c["candidate_id"], "adherence": 5.0, "aesthetics": 5.0, "status": "ok"}
        for c in (first, second)
    ]
    SelectStage(ctx.config).run(ctx, {"edit": [first, second], "validate": scores})
    return recorder.requests


# template file -> (how the stages render it, the task the simulator must recognise)
CONTRACT = {
    "design": (render_design, "design"),
    "invert": (render_invert, "invert"),
    "describe": (render_describe, "describe"),
    "design_image": (render_design_image, "design_image"),
    "score": (render_score, "score"),
    "pairwise": (render_pairwise, "pairwise"),
    "gate": (render_gate, "gate"),
    "unwanted": (render_prefilter("unwanted"), "unwanted"),
    "aesthetic": (render_prefilter("aesthetic"), "aesthetic"),
}


def recognised(request) -> str:
    if isinstance(request, TextRequest):
        return tasks.text_task("\n".join(m.content for m in request.messages))
    return vision.detect_task(f"{request.system or ''}\n{request.prompt}")


def test_every_template_has_a_contract():
    templates = {
        p.name.removesuffix(".txt")
        for p in files("nhr.prompts").iterdir()
        if p.name.endswith(".txt")
    }
    assert templates == set(CONTRACT)


def test_the_prefilter_score_check_uses_the_score_template(tmp_path):
    requests = render_prefilter("score")(tmp_path)
    assert requests and {recognised(r) for r in requests} == {"score"}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_the_simulator_recognises_every_template(tmp_path, name):
    render, task = CONTRACT[name]
    requests = render(tmp_path)
    assert requests
    assert [recognised(r) for r in requests] == [task] * len(requests)
    sim = SimBackend(SimBackendConfig())
    if isinstance(requests[0], TextRequest):
        answers = sim.chat(requests)
        assert llm.UNKNOWN_TASK_ANSWER not in answers
    else:
        answers = sim.ask(requests)
        assert vision.UNKNOWN_TASK_ANSWER not in answers
    assert not any(isinstance(a, PermanentBackendError) for a in answers), answers


@pytest.mark.parametrize(
    ("template", "marker", "reworded"),
    [
        ("score", "Instruction:", "Edit request:"),
        ("unwanted", "yes or no", "true or false"),
        ("pairwise", '"BetterEdit"', '"Winner"'),
    ],
)
def test_a_reworded_key_phrase_breaks_the_contract(
    tmp_path, monkeypatch, template, marker, reworded
):
    """What this contract protects: a template that loses its marker is no longer recognised."""
    from nhr.stages import base, prefilter, select

    original = base.template(template)
    assert marker in original
    changed = original.replace(marker, reworded)
    for module in (validate, prefilter, select):
        monkeypatch.setattr(
            module, "template", lambda name: changed if name == template else base.template(name)
        )
    requests = CONTRACT[template][0](tmp_path)
    assert requests and {recognised(r) for r in requests} == {"unknown"}


def test_text_and_vision_tasks_are_told_apart():
    design = design_request(context_for_text(), 0)
    text = design.messages[0].content
    assert tasks.text_task(text) == "design" and vision.detect_task(text) == "unknown"
    assert tasks.text_task("Tell me a joke") == "unknown"
    assert vision.detect_task("Describe this picture.") == "unknown"


def context_for_text() -> StageContext:
    return StageContext(
        config=parse_config(small_config_dict()), images=None, backends=lambda role: None
    )
