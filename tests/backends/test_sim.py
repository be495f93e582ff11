"""The simulator backend: protocols, determinism, sizes, metadata and speed."""

from __future__ import annotations

import io
import pickle
import time
from importlib import resources
from string import Template

import numpy as np
import pytest
from PIL import Image

from nhr.backends.base import (
    BackendError,
    ChatMessage,
    EditRequest,
    GenerateRequest,
    ImageEditor,
    ImageGenerator,
    PermanentBackendError,
    TextModel,
    TextRequest,
    VisionModel,
    VisionRequest,
)
from nhr.backends.sim import META_KEY, SUPPORTED_OPERATIONS, SimBackend, SimBackendConfig, truth
from nhr.backends.sim.render import decode_pixels, encode_png, render
from nhr.backends.sim.world import Scene
from nhr.taxonomy import OPERATIONS

PROMPT = (
    "A flat illustration of a street at sunset in autumn: a red bicycle on the left, "
    "a small blue striped mailbox in the middle and a large yellow umbrella in the top right "
    "corner. Eye-level view."
)


def template(name: str) -> str:
    return resources.files("nhr.prompts").joinpath(f"{name}.txt").read_text()


def clean_config(**overrides: object) -> SimBackendConfig:
    """No generator defects and no editor errors: every image and edit is as asked."""
    zero_gen = {
        k: 0.0 for k in ("missing_object", "duplicate_object", "garbled_object", "implausible")
    }
    zero_edit = {
        k: 0.0
        for k in (
            "noop",
            "wrong_target",
            "extra_change",
            "artefact",
            "noise",
            "color_drift",
            "partial",
        )
    }
    data: dict[str, object] = {"generator_errors": zero_gen, "editor_errors": zero_edit}
    data.update(overrides)
    return SimBackendConfig.model_validate(data)


def test_implements_all_protocols_and_reports_itself():
    backend = SimBackend(SimBackendConfig(model="sim-test"))
    for protocol in (TextModel, VisionModel, ImageGenerator, ImageEditor):
        assert isinstance(backend, protocol)
    info = backend.info()
    assert info.backend == "sim" and info.model == "sim-test"
    assert {"scale", "score_noise", "yes_no_flip"} <= set(info.params)


def test_supported_operations_are_taxonomy_keys():
    assert set(SUPPORTED_OPERATIONS) <= set(OPERATIONS)
    assert {"remove_object", "add_object", "change_color", "style_transfer"} <= set(
        SUPPORTED_OPERATIONS
    )


def test_same_request_gives_same_bytes_across_instances():
    a, b = SimBackend(SimBackendConfig()), SimBackend(SimBackendConfig())
    request = GenerateRequest(PROMPT, 512, 384, seed=3)
    png_a, png_b = a.generate([request])[0], b.generate([request])[0]
    assert isinstance(png_a, bytes) and png_a == png_b
    edit = EditRequest(png_a, "Make the red bicycle green", seed=1)
    assert a.edit([edit]) == b.edit([edit])
    ask = VisionRequest((png_a,), Template(template("gate")).substitute(prompt=PROMPT))
    assert a.ask([ask]) == b.ask([ask])
    chat = TextRequest((ChatMessage("user", _design_text("remove_object", 4)),), seed=9)
    assert a.chat([chat]) == b.chat([chat])
    assert a.generate([GenerateRequest(PROMPT, 512, 384, seed=4)]) != [png_a]


def _design_text(operation: str, count: int) -> str:
    return Template(template("design")).substitute(
        topic="everyday scenes",
        styles="photo, flat illustration",
        operation=operation,
        guidance=OPERATIONS[operation].guidance,
        batch_size=count,
    )


def test_output_sizes_follow_scale_and_edits_keep_the_input_size():
    backend = SimBackend(SimBackendConfig(scale=0.125))
    png = backend.generate([GenerateRequest(PROMPT, 1024, 768, seed=0)])[0]
    assert Image.open(io.BytesIO(png)).size == (128, 96)
    tiny = SimBackend(SimBackendConfig(scale=0.001)).generate([GenerateRequest(PROMPT, 64, 64, 0)])
    assert min(Image.open(io.BytesIO(tiny[0])).size) >= 8
    edited = backend.edit([EditRequest(png, "Remove the mailbox in the middle", seed=0)])[0]
    assert Image.open(io.BytesIO(edited)).size == (128, 96)
    # A PNG from elsewhere (no metadata) is still edited at its own size.
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, format="PNG")
    foreign = backend.edit([EditRequest(buffer.getvalue(), "Make it night", seed=0)])[0]
    assert Image.open(io.BytesIO(foreign)).size == (40, 30)


def test_metadata_round_trip_reproduces_the_pixels():
    png = SimBackend(SimBackendConfig()).generate([GenerateRequest(PROMPT, 800, 600, 5)])[0]
    record = truth.read_scene(png)
    assert record is not None and record["kind"] == "generated"
    assert META_KEY in Image.open(io.BytesIO(png)).info
    scene = Scene.from_dict(record["scene"])
    assert Scene.from_dict(scene.to_dict()) == scene
    width, height = Image.open(io.BytesIO(png)).size
    assert np.array_equal(render(scene, width, height), decode_pixels(png))
    assert encode_png(decode_pixels(png), record) == png  # byte-deterministic encoding


def test_edit_is_never_byte_identical_and_a_noop_stays_within_small_noise():
    config = clean_config(editor_errors={"noop": 1.0})
    backend = SimBackend(config)
    png = backend.generate([GenerateRequest(PROMPT, 1024, 1024, 2)])[0]
    edited = backend.edit([EditRequest(png, "Make the red bicycle green", seed=0)])[0]
    assert edited != png
    diff = np.abs(decode_pixels(edited).astype(int) - decode_pixels(png).astype(int))
    assert 0 < diff.max() < 10
    assert truth.label_candidate(png, edited, "Make the red bicycle green").error == "noop"


def test_one_megapixel_render_is_fast_enough():
    backend = SimBackend(SimBackendConfig(scale=1.0))
    backend.generate([GenerateRequest(PROMPT, 64, 64, 0)])  # warm caches
    start = time.perf_counter()
    png = backend.generate([GenerateRequest(PROMPT, 1024, 1024, 1)])[0]
    elapsed = time.perf_counter() - start
    assert Image.open(io.BytesIO(png)).size == (1024, 1024)
    assert elapsed < 1.0  # ~70 ms on the reference machine; generous for noisy CI


def test_small_render_is_milliseconds():
    backend = SimBackend(SimBackendConfig())
    requests = [GenerateRequest(PROMPT, 1024, 1024, seed) for seed in range(20)]
    backend.generate(requests[:2])
    start = time.perf_counter()
    backend.generate(requests)
    assert (time.perf_counter() - start) / len(requests) < 0.05  # ~4 ms each in practice


def test_batches_answer_one_entry_per_request_in_order():
    backend = SimBackend(SimBackendConfig())
    requests = [GenerateRequest(PROMPT, 256, 256, seed) for seed in range(5)]
    batch = backend.generate(requests)
    assert batch == [backend.generate([r])[0] for r in requests]


def test_invalid_requests_are_permanent_errors_not_crashes():
    backend = SimBackend(SimBackendConfig())
    [bad_size] = backend.generate([GenerateRequest(PROMPT, 0, 10, 0)])
    assert isinstance(bad_size, PermanentBackendError)
    [bad_image] = backend.edit([EditRequest(b"not a png", "Make it night", 0)])
    assert isinstance(bad_image, BackendError) and not bad_image.retryable
    png = backend.generate([GenerateRequest(PROMPT, 256, 256, 0)])[0]
    score = Template(template("score")).substitute(instruction="Make it night")
    [one_image] = backend.ask([VisionRequest((png,), score)])
    assert isinstance(one_image, PermanentBackendError)


def test_backend_pickles_for_process_executors():
    backend = SimBackend(SimBackendConfig())
    clone = pickle.loads(pickle.dumps(backend))
    request = GenerateRequest(PROMPT, 128, 128, 0)
    assert clone.generate([request]) == backend.generate([request])


@pytest.mark.parametrize("style", ["photo", "noir", "pixel-art", "watercolor", "oil", "sketch"])
def test_every_style_renders(style):
    prompt = PROMPT.replace("A flat illustration", f"A {style} picture")
    png = SimBackend(SimBackendConfig()).generate([GenerateRequest(prompt, 512, 512, 0)])[0]
    assert truth.read_scene(png)["scene"]["style"] == style
