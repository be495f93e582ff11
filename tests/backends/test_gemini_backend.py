"""GeminiBackend through the real google-genai SDK against the fake server, and a whole run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fake_api_server import FakeApiServer
from PIL import Image

from nhr.backends.api import MissingApiKeyError
from nhr.backends.base import (
    ChatMessage,
    EditRequest,
    GenerateRequest,
    PermanentBackendError,
    TextRequest,
    TransientBackendError,
    VisionRequest,
)
from nhr.backends.configs import GeminiBackendConfig
from nhr.backends.gemini import GeminiBackend, _classify, _retry_delay, nearest_aspect_ratio
from nhr.backends.sim import SimBackend, SimBackendConfig

KEY = "AIza-gemini-test-Pp7-must-not-leak"
PROMPT = "A photo of a red apple and a blue cup on a wooden table"
SIM = SimBackend(SimBackendConfig(scale=1.0))  # what the fake server answers with


@pytest.fixture
def server():
    with FakeApiServer() as fake:
        yield fake


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("NHR_GEMINI_TEST_KEY", KEY)


def backend_for(server: FakeApiServer, **fields) -> GeminiBackend:
    fields.setdefault("model", "sim-llm")
    limits = {"backoff_s": 0.01, "max_backoff_s": 0.05, **fields.pop("limits", {})}
    config = GeminiBackendConfig(
        backend="gemini",
        base_url=server.url,
        api_key_env="NHR_GEMINI_TEST_KEY",
        limits=limits,
        **fields,
    )
    return GeminiBackend(config)


def gemini_bodies(server: FakeApiServer) -> list[dict]:
    return [body for path, body in server.bodies if path.endswith(":generateContent")]


def size_of(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return image.size


def test_chat_answers_like_the_simulator_and_sends_the_sampling_options(server):
    backend = backend_for(server)
    request = TextRequest(
        (ChatMessage("system", "Be brief."), ChatMessage("user", "Hello")),
        temperature=0.7,
        max_tokens=99,
        seed=3,
    )
    assert backend.chat([request]) == SIM.chat([request])
    backend.close()
    [body] = gemini_bodies(server)
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hello"}]}]
    config = body["generationConfig"]
    assert (config["temperature"], config["maxOutputTokens"], config["seed"]) == (0.7, 99, 3)
    assert "/v1/models/sim-llm:generateContent" in server.requests


def test_config_overrides_and_a_tuned_model_name_pass_through(server):
    backend = backend_for(server, model="tunedModels/nhr-judge-1", temperature=0.1, max_tokens=7)
    backend.chat([TextRequest((ChatMessage("user", "Hi"),), temperature=1.0, max_tokens=500)])
    backend.close()
    config = gemini_bodies(server)[0]["generationConfig"]
    assert (config["temperature"], config["maxOutputTokens"]) == (0.1, 7)
    assert list(server.requests) == ["/v1/tunedModels/nhr-judge-1:generateContent"]


def test_ask_sends_images_inline_before_the_text(server):
    before, after = SIM.generate([GenerateRequest(PROMPT, 64, 48, s) for s in (1, 2)])
    request = VisionRequest(
        (before, after),
        "Instruction: Remove the apple.\nRate InstructionAdherence and ImageAesthetic.",
        system="You judge image edits.",
    )
    backend = backend_for(server)
    assert backend.ask([request]) == SIM.ask([request])  # every byte arrived
    backend.close()
    [body] = gemini_bodies(server)
    parts = body["contents"][0]["parts"]
    assert ["inlineData" in p or "inline_data" in p for p in parts] == [True, True, False]
    assert parts[-1]["text"].startswith("Instruction:")
    assert body["systemInstruction"]["parts"] == [{"text": "You judge image edits."}]


def test_generate_asks_for_an_image_and_returns_the_exact_size(server):
    backend = backend_for(server, model="sim-t2i")
    exact, resized = backend.generate(
        [GenerateRequest(PROMPT, 64, 48, seed=5), GenerateRequest(PROMPT, 100, 70, seed=5)]
    )
    usage = backend.usage()
    backend.close()
    # 64x48 is 4:3, which the fake model draws at 64x48: the PNG travels unchanged.
    assert exact == SIM.generate([GenerateRequest(PROMPT, 64, 48, seed=5)])[0]
    assert size_of(resized) == (100, 70)
    configs = sorted(
        (b["generationConfig"] for b in gemini_bodies(server)),
        key=lambda c: c["imageConfig"]["aspectRatio"],
    )
    assert [c["imageConfig"]["aspectRatio"] for c in configs] == ["3:2", "4:3"]
    assert all(c["responseModalities"] == ["IMAGE"] and c["seed"] == 5 for c in configs)
    assert usage["images"] == 2 and usage["output_tokens"] == 2 * 1290


def test_edit_sends_the_image_inline_and_returns_the_edit(server):
    source = SIM.generate([GenerateRequest(PROMPT, 64, 48, seed=4)])[0]
    backend = backend_for(server, model="sim-editor")
    [edited] = backend.edit([EditRequest(source, "Remove the apple", seed=9)])
    backend.close()
    assert edited == SIM.edit([EditRequest(source, "Remove the apple", seed=9)])[0]
    [body] = gemini_bodies(server)
    assert body["generationConfig"]["responseModalities"] == ["IMAGE"]


@pytest.mark.parametrize(
    ("fault", "reason", "detail"),
    [
        ("safety", "safety", "prompt blocked: SAFETY"),
        ("refusal", "safety", "SAFETY"),
    ],
)
def test_blocks_and_empty_answers_become_item_errors(fault, reason, detail):
    with FakeApiServer(faults={1: fault, 2: fault}) as server:
        backend = backend_for(server)
        [chat] = backend.chat([TextRequest((ChatMessage("user", "Hello"),))])
        [image] = backend.generate([GenerateRequest(PROMPT, 64, 48, seed=0)])
        backend.close()
    for error in (chat, image):
        assert error == PermanentBackendError(reason, detail)
    assert server.total_requests == 2  # not retried


@pytest.mark.parametrize("fault", ["empty", "null_content", "empty_image"])
def test_empty_answers_are_retried_within_the_budget(fault):
    text_too = fault != "empty_image"
    with FakeApiServer(faults={1: fault, 3: fault}) as server:
        backend = backend_for(server)
        [image] = backend.generate([GenerateRequest(PROMPT, 64, 48, seed=0)])
        [chat] = backend.chat([TextRequest((ChatMessage("user", "Hello"),))])
        backend.close()
    assert isinstance(chat, str) and isinstance(image, bytes)
    assert server.total_requests == (4 if text_too else 3)  # each empty answer asked again
    with FakeApiServer(fault_rates={fault: 1.0}) as server:
        backend = backend_for(server, limits={"max_retries": 1})
        [image] = backend.generate([GenerateRequest(PROMPT, 64, 48, seed=0)])
        backend.close()
    assert image == TransientBackendError("malformed_response", image.detail)
    assert server.total_requests == 2


def test_an_image_request_answered_with_words_counts_as_safety():
    with FakeApiServer(faults={1: "text"}) as server:
        backend = backend_for(server, model="sim-t2i")
        [error] = backend.generate([GenerateRequest(PROMPT, 64, 48, seed=0)])
        backend.close()
    assert isinstance(error, PermanentBackendError) and error.reason == "safety"
    assert "can't create" in error.detail


def test_nearest_aspect_ratio():
    assert nearest_aspect_ratio(1024, 1024) == "1:1"
    assert nearest_aspect_ratio(1024, 768) == "4:3"
    assert nearest_aspect_ratio(768, 1344) == "9:16"
    assert nearest_aspect_ratio(2000, 800) == "21:9"


def test_a_429_with_retry_info_carries_the_delay():
    from google.genai import errors

    details = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "quota",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"}
            ],
        }
    }
    error = _classify(errors.ClientError(429, details))
    assert isinstance(error, TransientBackendError) and error.reason == "rate_limited"
    assert error.retry_after == 0.5
    assert _retry_delay({"error": {"details": []}}) is None
    assert _classify(errors.ServerError(503, {"error": {"message": "busy"}})).reason == (
        "server_error"
    )


def test_vertex_needs_project_and_location(monkeypatch):
    monkeypatch.delenv("NHR_TEST_PROJECT", raising=False)
    monkeypatch.setenv("NHR_TEST_LOCATION", "europe-west4")
    config = GeminiBackendConfig(
        backend="gemini",
        model="gemini-2.0-flash",
        vertex=True,
        project_env="NHR_TEST_PROJECT",
        location_env="NHR_TEST_LOCATION",
    )
    with pytest.raises(MissingApiKeyError) as caught:
        GeminiBackend(config)
    assert caught.value.variable == "NHR_TEST_PROJECT"
    monkeypatch.setenv("NHR_TEST_PROJECT", "my-project")
    backend = GeminiBackend(config)  # no key needed; the client is built on first use
    assert backend.info().params == {"vertex": True}
    backend.close()


def test_info_names_model_and_host_never_the_key(server):
    backend = backend_for(server, max_tokens=64)
    info = backend.info()
    backend.close()
    host = server.url.split("//")[1]
    assert (info.backend, info.model) == ("gemini", "sim-llm")
    assert info.params == {"vertex": False, "base_url": host, "max_tokens": 64}
    assert KEY not in repr(info)


# --- a whole run through the SDK ---------------------------------------------------------------


def test_mine_through_the_gemini_sdk(small_config, tmp_path):
    import nhr

    # The server's model judges like the quickstart's validator (a plain Gaussian judge on
    # the simulator's continuous truth passes almost nothing at T = 4.7).
    judging = SimBackendConfig(scale=1.0, judge="tuned-gemini-2.0-flash")
    with FakeApiServer(sim=judging, faults={3: "429", 10: "500"}, retry_after="0") as server:
        api = {
            "backend": "gemini",
            "base_url": server.url,
            "api_key_env": "NHR_GEMINI_TEST_KEY",
            "limits": {"backoff_s": 0.01, "max_backoff_s": 0.02},
        }
        config = small_config()
        config["models"].update(
            designer={**api, "model": "sim-llm"},
            gate={**api, "model": "sim-vlm-7b"},
            prefilter={**api, "model": "sim-vlm-72b"},
            validator={**api, "model": "sim-validator"},
            inverter={**api, "model": "sim-llm"},
        )
        result = nhr.mine(config, tmp_path / "run")

    assert result.stats["dataset"]["rows"] > 0
    stats = json.loads((tmp_path / "run" / "report" / "stats.json").read_text())
    usage = [stage["usage"] for stage in stats["stages"]]
    assert sum(u.get("requests", 0) for u in usage) == server.total_requests
    assert sum(u.get("transport_retries", 0) for u in usage) == 2
    assert set(server.keys_seen) == {KEY}
    files = [path for path in Path(tmp_path / "run").rglob("*") if path.is_file()]
    assert files and not [str(p) for p in files if KEY.encode() in p.read_bytes()]
