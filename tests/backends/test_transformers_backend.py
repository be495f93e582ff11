"""The transformers backend on tiny random models built locally (offline, CPU, no torchvision)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

import nhr
from helpers import table_rows
from nhr.backends import create_backend
from nhr.backends.base import (
    ChatMessage,
    MissingExtraError,
    PermanentBackendError,
    TextModel,
    TextRequest,
    TransientBackendError,
    VisionModel,
    VisionRequest,
)
from nhr.backends.configs import TransformersBackendConfig
from nhr.backends.transformers import (
    ImageGridProcessor,
    TransformersBackend,
    decode_image,
    fit_image,
)
from nhr.parsing import parse_yes_no

pytest.importorskip("torch")
pytest.importorskip("transformers")


def backend_for(folder, **settings) -> TransformersBackend:
    config = TransformersBackendConfig(backend="transformers", model=str(folder), **settings)
    return create_backend(config)


def png(width: int, height: int, color=(200, 40, 40), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def text_request(prompt: str, **fields) -> TextRequest:
    messages = (ChatMessage("system", "You are terse."), ChatMessage("user", prompt))
    return TextRequest(messages=messages, **{"max_tokens": 6, **fields})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_transformers import build_tiny_llm, build_tiny_qwen_vl, build_tiny_vlm

    root = tmp_path_factory.mktemp("tiny-transformers")
    return {
        "llm": build_tiny_llm(root / "llm"),
        "llm_yes": build_tiny_llm(root / "llm-yes", fixed_answer="Yes"),
        "vlm": build_tiny_vlm(root / "vlm"),
        "vlm_yes": build_tiny_vlm(root / "vlm-yes", fixed_answer="Yes"),
        "qwen_vl_yes": build_tiny_qwen_vl(root / "qwen-vl-yes", fixed_answer="Yes"),
    }


@pytest.fixture(scope="module")
def llm(models):
    return backend_for(models["llm"])


@pytest.fixture(scope="module")
def vlm(models):
    return backend_for(models["vlm"])


def test_protocols_and_info(models):
    backend = backend_for(models["vlm"], max_new_tokens=32, max_image_pixels=128 * 128)
    assert isinstance(backend, TextModel) and isinstance(backend, VisionModel)
    info = backend.info()
    assert info.backend == "transformers"
    assert info.model == str(models["vlm"])
    assert info.params == {
        "revision": None,
        "dtype": "auto",
        "device": "auto",
        "max_new_tokens": 32,
        "max_image_pixels": 128 * 128,
    }


def test_chat_batch_of_different_lengths(llm):
    requests = [
        text_request("Hi"),
        text_request("Write one short sentence about a red bicycle leaning on a wall."),
        text_request("A longer prompt, " * 12 + "then stop.", max_tokens=3),
    ]
    answers = llm.chat(requests)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert llm.chat(requests) == answers  # greedy: deterministic
    # left padding: each answer is the one the request gets alone
    assert [llm.chat([r])[0] for r in requests] == answers
    assert llm.usage()["input_tokens"] > 0 and llm.usage()["output_tokens"] > 0


def test_chat_sampling_is_seeded_per_request(llm):
    sampled = text_request("Tell me something.", temperature=1.0, seed=7, max_tokens=8)
    alone = llm.chat([sampled])[0]
    assert llm.chat([sampled])[0] == alone
    in_batch = llm.chat([text_request("Other", temperature=1.0, seed=1), sampled])[1]
    assert in_batch == alone  # the draw depends on the request's own seed only
    others = {
        llm.chat([text_request("Tell me something.", temperature=1.0, seed=s)])[0] for s in range(4)
    }
    assert len(others) > 1


def test_ask_with_one_and_two_images(vlm):
    requests = [
        VisionRequest(images=(png(48, 40),), prompt="What is this?", max_tokens=5),
        VisionRequest(
            images=(png(30, 60, (0, 0, 255)), png(64, 64, (0, 255, 0))),
            prompt="Compare the first and the second image.",
            system="Answer briefly.",
            max_tokens=5,
        ),
    ]
    answers = vlm.ask(requests)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert vlm.ask(requests) == answers


def test_chat_on_a_vision_only_model_uses_the_vlm(models):
    backend = backend_for(models["vlm_yes"])
    assert parse_yes_no(backend.chat([text_request("Is the sky blue?")])[0]) is True
    assert backend._text is None and backend._vision is not None  # one copy in memory


def test_fixed_answer_models_say_yes(models):
    llm = backend_for(models["llm_yes"])
    vlm = backend_for(models["vlm_yes"])
    answers = llm.chat([text_request("Is it?"), text_request("Anything " * 20)])
    assert answers == ["Yes", "Yes"]
    gate = VisionRequest(images=(png(40, 40),), prompt="Plausible? Answer Yes or No.", max_tokens=8)
    assert [parse_yes_no(a) for a in vlm.ask([gate, gate])] == [True, True]


def test_fit_image_keeps_within_max_pixels():
    big = Image.new("RGB", (4000, 3000))
    small = fit_image(big, 1024 * 1024)
    assert small.width * small.height <= 1024 * 1024
    assert abs(small.width / small.height - 4 / 3) < 0.01
    assert small.width * small.height > 0.99 * 1024 * 1024
    odd = fit_image(Image.new("RGB", (1001, 7)), 64 * 64)
    assert odd.width * odd.height <= 64 * 64 and odd.height >= 1
    untouched = Image.new("RGB", (100, 100))
    assert fit_image(untouched, 100 * 100) is untouched
    decoded = decode_image(png(300, 200, (10, 20, 30, 128), mode="RGBA"), 64 * 64)
    assert decoded.mode == "RGB" and decoded.width * decoded.height <= 64 * 64


def test_ask_downscales_large_images(models):
    backend = backend_for(models["vlm"], max_image_pixels=64 * 64)
    prepared = backend._prepare_vision(VisionRequest(images=(png(640, 480),), prompt="?"))
    (image,) = prepared.images
    assert image.width * image.height <= 64 * 64 and image.size == (73, 55)
    request = VisionRequest(images=(png(640, 480),), prompt="?", max_tokens=3)
    assert isinstance(backend.ask([request])[0], str)


def test_exceptions_in_generate_become_item_errors(vlm, monkeypatch):
    import torch

    good = VisionRequest(images=(png(32, 32),), prompt="Fine?", max_tokens=3)
    expected = vlm.ask([good])[0]
    model = vlm._vision.model
    real_generate = model.generate

    def fails_on_batches(**kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise RuntimeError("batch too big")
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", fails_on_batches)
    broken = VisionRequest(images=(b"not a png",), prompt="?")
    answers = vlm.ask([good, broken, good])
    assert answers[0] == answers[2] == expected  # retried one by one
    assert isinstance(answers[1], PermanentBackendError) and answers[1].reason == "bad_image"

    def always_fails(**kwargs):
        raise ValueError("no way")

    monkeypatch.setattr(model, "generate", always_fails)
    answers = vlm.ask([good, good])
    assert answers == [PermanentBackendError("ValueError", "no way")] * 2

    def out_of_memory(**kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(model, "generate", out_of_memory)
    (answer,) = vlm.ask([good])
    assert isinstance(answer, TransientBackendError) and answer.retryable
    assert answer.reason == "exception" and answer.detail.startswith("out of memory")


def test_qwen_vl_processor_without_torchvision(models):
    """A Qwen2.5-VL repo whose AutoProcessor needs torchvision loads through the stand-in."""
    from transformers import AutoProcessor

    folder = models["qwen_vl_yes"]
    try:
        AutoProcessor.from_pretrained(folder)
        has_torchvision = True
    except ImportError as error:
        assert "torchvision" in str(error).lower()
        has_torchvision = False
    backend = backend_for(folder)
    requests = [
        VisionRequest(images=(png(100, 80),), prompt="Plausible?", max_tokens=4),
        VisionRequest(images=(png(60, 60), png(90, 120)), prompt="Same scene?", system="Be brief."),
    ]
    assert backend.ask(requests) == ["Yes", "Yes"]
    assert backend.chat([text_request("Is it?")]) == ["Yes"]
    processor = backend._vision.processor
    if not has_torchvision:
        assert isinstance(processor, ImageGridProcessor)
        inputs = processor(
            text=["<|image_pad|> and <|image_pad|>"],
            images=[[Image.new("RGB", (56, 56)), Image.new("RGB", (112, 112))]],
        )
        grids = inputs["image_grid_thw"].tolist()
        assert grids == [[1, 4, 4], [1, 8, 8]]
        assert int(inputs["mm_token_type_ids"].sum()) == (16 + 64) // 4


def test_processor_needing_torchvision_gives_an_actionable_error(models, monkeypatch):
    """A processor that needs torchvision and is not Qwen-VL style cannot be stood in for."""
    from transformers import AutoProcessor

    def needs_torchvision(*args, **kwargs):
        raise ImportError("SomeVideoProcessor requires the Torchvision library")

    monkeypatch.setattr(AutoProcessor, "from_pretrained", needs_torchvision)
    backend = backend_for(models["vlm"])
    with pytest.raises(MissingExtraError, match="pip install torchvision"):
        backend.ask([VisionRequest(images=(png(32, 32),), prompt="?")])


def test_missing_packages_raise_missing_extra(models, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch" else real_find_spec(name, *a),
    )
    with pytest.raises(MissingExtraError, match=r"nhr\[transformers\]"):
        backend_for(models["llm"])


def test_import_nhr_does_not_import_transformers():
    code = (
        "import sys, nhr, nhr.backends, nhr.backends.configs\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pipeline_gate_on_the_transformers_backend(models, tmp_path, small_config):
    folder = str(models["vlm_yes"])
    data = small_config(
        run={"prompts": 4},
        generate={"images_per_prompt": 1},
        models={"gate": {"backend": "transformers", "model": folder}},
    )
    result = nhr.mine(data, tmp_path)
    stages = {s["stage"]: s for s in result.stats["stages"]}
    gate = stages["plausibility"]
    assert gate["rows_in"] > 0 and gate["rows_out"] == gate["rows_in"]
    rows = table_rows(tmp_path, "plausibility")
    assert rows and all(row["status"] == "ok" and row["answer"] == "Yes" for row in rows)
    identity = json.loads(rows[0]["model"])
    assert identity["backend"] == "transformers" and identity["model"] == folder


def test_a_model_that_cannot_be_loaded_stops_with_its_name(tmp_path):
    from nhr.backends.base import BackendSetupError, ChatMessage, TextRequest

    backend = TransformersBackend(
        TransformersBackendConfig(backend="transformers", model=str(tmp_path / "nowhere"))
    )
    with pytest.raises(BackendSetupError, match="nowhere"):
        backend.chat([TextRequest(messages=(ChatMessage("user", "hi"),))])
