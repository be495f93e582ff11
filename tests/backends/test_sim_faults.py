"""Fault injection: rates, determinism per (request, attempt), garbage text, latency."""

from __future__ import annotations

import time
from importlib import resources
from string import Template

import pytest

from nhr.backends.base import (
    BackendError,
    ChatMessage,
    GenerateRequest,
    PermanentBackendError,
    TextRequest,
    TransientBackendError,
    VisionRequest,
)
from nhr.backends.sim import SimBackend, SimBackendConfig
from nhr.parsing import ParseError, extract_json, parse_scores, parse_yes_no


def template(name: str) -> str:
    return resources.files("nhr.prompts").joinpath(f"{name}.txt").read_text()


def chats(count: int) -> list[TextRequest]:
    text = Template(template("invert")).substitute(
        prompt="A photo of a park: a red ball in the middle.",
        instruction="Remove the ball in the middle",
    )
    return [
        TextRequest((ChatMessage("user", text),), temperature=1.0, seed=i) for i in range(count)
    ]


def faulty(**faults: float) -> SimBackend:
    return SimBackend(SimBackendConfig(model="sim-faulty", faults=faults))


def test_no_faults_by_default():
    results = SimBackend(SimBackendConfig()).chat(chats(300))
    assert all(isinstance(r, str) and r.strip() for r in results)


def test_fault_rates_are_roughly_as_configured():
    results = faulty(exception=0.1, timeout=0.05, malformed=0.1, refusal=0.02).chat(chats(2000))
    kinds = [r.reason if isinstance(r, BackendError) else "text" for r in results]
    assert 0.07 <= kinds.count("exception") / 2000 <= 0.13
    assert 0.03 <= kinds.count("timeout") / 2000 <= 0.07
    assert 0.005 <= kinds.count("refusal") / 2000 <= 0.04
    assert all(
        isinstance(r, TransientBackendError)
        for r in results
        if isinstance(r, BackendError) and r.reason in ("exception", "timeout")
    )
    assert all(
        isinstance(r, PermanentBackendError)
        for r in results
        if isinstance(r, BackendError) and r.reason == "refusal"
    )
    garbage = [r for r in results if isinstance(r, str) and not r.strip()]
    assert 0.07 <= len(garbage) / 2000 <= 0.13  # a malformed inversion is empty


def test_faults_are_deterministic_and_a_retry_draws_again():
    requests = chats(200)
    first = faulty(exception=0.3).chat(requests)
    assert faulty(exception=0.3).chat(requests) == first  # a fresh instance, same faults
    backend = faulty(exception=0.3)
    backend.chat(requests)
    retried = backend.chat(requests)  # second attempt of every request
    failed = [i for i, r in enumerate(first) if isinstance(r, BackendError)]
    assert failed and sum(isinstance(retried[i], BackendError) for i in failed) < len(failed) * 0.6


def test_malformed_answers_do_not_parse():
    backend = faulty(malformed=1.0)
    design = Template(template("design")).substitute(
        topic="t", styles="photo", operation="remove_object", guidance="g", batch_size=3
    )
    for seed in range(10):
        [answer] = backend.chat([TextRequest((ChatMessage("user", design),), seed=seed)])
        with pytest.raises(ParseError):
            items = extract_json(answer, expect=list)
            assert items  # an empty array would be as useless
    png = SimBackend(SimBackendConfig()).generate([GenerateRequest("A photo of a cat.", 64, 64, 0)])
    score = Template(template("score")).substitute(instruction="Make it night")
    gate = Template(template("gate")).substitute(prompt="A photo of a cat.")
    for seed in range(10):
        [answer] = backend.ask([VisionRequest((png[0], png[0]), score, seed=seed, temperature=1)])
        with pytest.raises(ParseError):
            parse_scores(answer)
        [answer] = backend.ask([VisionRequest((png[0],), gate, seed=seed, temperature=1)])
        with pytest.raises(ParseError):
            parse_yes_no(answer)


def test_images_get_errors_but_never_garbage():
    results = faulty(malformed=1.0, exception=0.2).generate(
        [GenerateRequest("A photo of a cat.", 64, 64, seed) for seed in range(50)]
    )
    assert all(isinstance(r, (bytes, TransientBackendError)) for r in results)
    assert any(isinstance(r, bytes) for r in results)


def test_latency_is_per_item():
    backend = faulty(latency_s=0.01)
    start = time.perf_counter()
    backend.chat(chats(5))
    assert time.perf_counter() - start >= 0.05
