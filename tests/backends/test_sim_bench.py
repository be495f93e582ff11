"""The simulated judge answers the judge prompts of `nhr bench` (GEdit-Bench, ImgEdit-Bench)
in each protocol's form, from the same readings it gives nhr's own templates."""

from __future__ import annotations

import pytest

from nhr.backends.base import EditRequest, GenerateRequest, VisionRequest
from nhr.backends.sim import SimBackend, tasks
from nhr.backends.sim.config import SimBackendConfig
from nhr.bench import gedit, imgedit

SCENE = "A flat illustration of a kitchen: a blue lamp on the right and a small green plant."
CLEAN = {"noop": 0, "wrong_target": 0, "extra_change": 0, "artefact": 0, "partial": 0}


def test_bench_prompts_are_recognised():
    assert tasks.vision_task(gedit.sc_prompt("Remove the lamp")) == "gedit_sc"
    assert tasks.vision_task(gedit.pq_prompt()) == "gedit_pq"
    for category, criteria in imgedit.CRITERIA.items():
        text = imgedit.prompt(category, "Remove the lamp")
        assert tasks.vision_task(text) == "imgedit"
        assert tasks.criteria(text) == [name for name, _, _ in criteria]
    assert tasks.vision_task("Rate this picture from 0 to 10.") == "unknown"


def _source(seed: int = 3) -> bytes:
    generator = SimBackend(SimBackendConfig(backend="sim", model="sim-t2i"))
    (png,) = generator.generate([GenerateRequest(SCENE, 96, 96, seed)])
    return png


def _edit(source: bytes, instruction: str, **errors: float) -> bytes:
    config = SimBackendConfig(backend="sim", model="sim-editor", editor_errors={**CLEAN, **errors})
    (edited,) = SimBackend(config).edit([EditRequest(source, instruction, 0)])
    return edited


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


@pytest.mark.parametrize("judge", [None, "tuned-gemini-2.0-flash"])
def test_answers_parse_and_follow_the_edit(judge):
    """Over a few sources: a good edit reads as done, a no-op as not done but not over-edited,
    an edit with unrequested changes as more over-edited; every answer parses."""
    backend = SimBackend(SimBackendConfig(backend="sim", model="sim-validator", judge=judge))
    instruction = "Remove the blue lamp"
    kinds = {"good": {}, "noop": {"noop": 1.0}, "extra": {"extra_change": 1.0}}
    sc: dict[str, list[list[int]]] = {name: [] for name in kinds}
    criteria: dict[str, list[list[int]]] = {name: [] for name in kinds}

    def ask(request: VisionRequest) -> str:
        (text,) = backend.ask([request])
        assert isinstance(text, str)
        return text

    for seed in range(8):
        source = _source(seed)
        for name, errors in kinds.items():
            png = _edit(source, instruction, **errors)
            requests = gedit.judge_requests(_item(source, instruction, "subject-remove"), png)
            sc[name].append(gedit.parse("sc", ask(requests["sc"])))
            assert all(0 <= v <= 10 for v in gedit.parse("pq", ask(requests["pq"])))
            ((kind, request),) = imgedit.judge_requests(
                _item(source, instruction, "remove"), png
            ).items()
            criteria[name].append(imgedit.parse(kind, ask(request)))
    success = {name: _mean(s[0] for s in scores) for name, scores in sc.items()}
    over = {name: _mean(s[1] for s in scores) for name, scores in sc.items()}
    assert success["good"] >= success["noop"] + 2  # a halo lifts a pretty no-op
    assert over["noop"] >= 7 and over["extra"] < over["good"]
    first = {name: _mean(s[0] for s in scores) for name, scores in criteria.items()}
    assert first["good"] >= first["noop"] + 0.75
    assert all(v <= s[0] for scores in criteria.values() for s in scores for v in s[1:])


def _item(source: bytes, instruction: str, task: str):
    from nhr.bench.runner import BenchItem

    return BenchItem(key="k", task=task, instruction=instruction, image=source)


def test_answers_are_deterministic_and_need_both_images():
    backend = SimBackend(SimBackendConfig(backend="sim", model="sim-validator"))
    source = _source()
    request = VisionRequest(
        images=(source, _edit(source, "Remove the blue lamp")),
        prompt=gedit.sc_prompt("Remove the blue lamp"),
    )
    assert backend.ask([request]) == backend.ask([request])
    (error,) = backend.ask([VisionRequest(images=(source,), prompt=request.prompt)])
    assert not isinstance(error, str)
