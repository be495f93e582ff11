"""OpenAIBackend through the real openai SDK against the fake server, and a whole run."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from fake_api_server import FakeApiServer
from PIL import Image

from nhr.backends.base import (
    ChatMessage,
    EditRequest,
    GenerateRequest,
    PermanentBackendError,
    TextRequest,
    TransientBackendError,
    VisionRequest,
)
from nhr.backends.configs import OpenAIBackendConfig
from nhr.backends.openai import OpenAIBackend
from nhr.backends.sim import META_KEY, SimBackend, SimBackendConfig

KEY = "sk-openai-test-Zq8-must-not-leak"
PROMPT = "A photo of a red apple and a blue cup on a wooden table"
SIM = SimBackend(SimBackendConfig(scale=1.0))  # what the fake server answers with


@pytest.fixture
def server():
    with FakeApiServer() as fake:
        yield fake


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("NHR_OPENAI_TEST_KEY", KEY)


def backend_for(server: FakeApiServer, **fields) -> OpenAIBackend:
    fields.setdefault("model", "sim-llm")
    limits = {"backoff_s": 0.01, "max_backoff_s": 0.05, **fields.pop("limits", {})}
    config = OpenAIBackendConfig(
        backend="openai",
        base_url=server.openai_url,
        api_key_env="NHR_OPENAI_TEST_KEY",
        limits=limits,
        **fields,
    )
    return OpenAIBackend(config)


def bodies(server: FakeApiServer, suffix: str) -> list[dict]:
    return [body for path, body in server.bodies if path.endswith(suffix)]


def size_of(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return image.size


def test_chat_answers_like_the_simulator_and_sends_the_sampling_options(server):
    backend = backend_for(server, extra_body={"top_k": 5})
    request = TextRequest(
        (ChatMessage("system", "Be brief."), ChatMessage("user", "Hello")),
        temperature=0.7,
        max_tokens=99,
        seed=3,
    )
    assert backend.chat([request]) == SIM.chat([request])
    backend.close()
    [body] = bodies(server, "/chat/completions")
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    assert (body["temperature"], body["max_tokens"], body["seed"], body["top_k"]) == (0.7, 99, 3, 5)
    assert body["model"] == "sim-llm"


def test_config_overrides_the_stages_temperature_and_max_tokens(server):
    backend = backend_for(server, temperature=0.2, max_tokens=12)
    backend.chat([TextRequest((ChatMessage("user", "Hello"),), temperature=1.0, max_tokens=500)])
    backend.close()
    [body] = bodies(server, "/chat/completions")
    assert (body["temperature"], body["max_tokens"]) == (0.2, 12)
    assert "seed" not in body


def test_ask_sends_images_byte_exact_as_png_data_uris_before_the_text(server):
    before, after = SIM.generate([GenerateRequest(PROMPT, 64, 48, s) for s in (1, 2)])
    request = VisionRequest(
        (before, after),
        "Instruction: Remove the apple.\nRate InstructionAdherence and ImageAesthetic.",
        system="You judge image edits.",
    )
    backend = backend_for(server, image_detail="low")
    # The simulator answers from the images' embedded truth and a digest of the request: the
    # same answer means every byte arrived.
    assert backend.ask([request]) == SIM.ask([request])
    backend.close()
    [body] = bodies(server, "/chat/completions")
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You judge image edits."}
    assert [part["type"] for part in user["content"]] == ["image_url", "image_url", "text"]
    assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user["content"][0]["image_url"]["detail"] == "low"


def test_ask_falls_back_to_the_scripted_score_for_images_without_truth():
    plain = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(plain, format="PNG")
    fallback = '{"InstructionAdherence": 4.9, "ImageAesthetic": 4.8}'
    with FakeApiServer(score_fallback=fallback) as server:
        backend = backend_for(server)
        request = VisionRequest((plain.getvalue(), plain.getvalue()), "Rate InstructionAdherence")
        assert backend.ask([request]) == [fallback]
        backend.close()


def test_generate_returns_the_png_of_the_exact_size_asked(server):
    backend = backend_for(server, model="sim-t2i", image_quality="high")
    exact, other = backend.generate(
        [GenerateRequest(PROMPT, 64, 48, seed=0), GenerateRequest(PROMPT, 40, 40, seed=0)]
    )
    backend.close()
    # The server drew 64x48 itself: the PNG (and its ground truth) travels unchanged.
    assert exact == SIM.generate([GenerateRequest(PROMPT, 64, 48, seed=0)])[0]
    assert size_of(other) == (40, 40)
    sent = sorted(bodies(server, "/images/generations"), key=lambda body: body["size"])
    assert [body["size"] for body in sent] == ["40x40", "64x48"]  # sent concurrently
    assert all(b["response_format"] == "b64_json" and b["quality"] == "high" for b in sent)
    assert backend.usage()["images"] == 2


def test_generate_resizes_an_answer_of_another_size():
    with FakeApiServer(SimBackendConfig(scale=0.5)) as server:  # draws at half size
        backend = backend_for(server, model="gpt-image-1")
        [png] = backend.generate([GenerateRequest(PROMPT, 64, 48, seed=0)])
        backend.close()
    assert size_of(png) == (64, 48)
    assert "response_format" not in bodies(server, "/images/generations")[0]


def test_edit_uploads_the_png_and_returns_the_edit(server):
    source = SIM.generate([GenerateRequest(PROMPT, 64, 48, seed=4)])[0]
    request = EditRequest(source, "Remove the apple", seed=9)
    backend = backend_for(server, model="sim-editor")
    [edited] = backend.edit([request])
    backend.close()
    assert edited == SIM.edit([EditRequest(source, "Remove the apple", seed=0)])[0]
    with Image.open(io.BytesIO(edited)) as image:
        assert META_KEY in image.info or META_KEY in getattr(image, "text", {})
    [body] = bodies(server, "/images/edits")
    assert body["image"] == source and body["prompt"] == "Remove the apple"
    assert body["size"] == "64x48"


def test_edit_of_bytes_that_are_no_image_fails_without_a_request(server):
    backend = backend_for(server)
    [error] = backend.edit([EditRequest(b"nope", "Remove the apple", seed=0)])
    backend.close()
    assert isinstance(error, PermanentBackendError) and error.reason == "invalid_request"


@pytest.mark.parametrize(("fault", "reason"), [("refusal", "refusal"), ("safety", "safety")])
def test_answers_without_content_become_item_errors(fault, reason):
    with FakeApiServer(faults={1: fault}) as server:
        backend = backend_for(server)
        [chat] = backend.chat([TextRequest((ChatMessage("user", "Hello"),))])
        backend.close()
    assert isinstance(chat, PermanentBackendError) and chat.reason == reason
    assert server.total_requests == 1  # a permanent error is not retried


def test_image_answers_blocked_for_safety_become_item_errors():
    with FakeApiServer(faults={1: "safety"}) as server:
        backend = backend_for(server, model="sim-t2i")
        [error] = backend.generate([GenerateRequest(PROMPT, 64, 48, seed=0)])
        backend.close()
    assert isinstance(error, PermanentBackendError) and error.reason == "safety"


@pytest.mark.parametrize("fault", ["empty", "null_content"])
def test_empty_choices_or_null_content_are_retried_within_the_budget(fault):
    with FakeApiServer(faults={1: fault}) as server:
        backend = backend_for(server)
        [chat] = backend.chat([TextRequest((ChatMessage("user", "Hello"),))])
        backend.close()
    assert isinstance(chat, str) and server.total_requests == 2
    with FakeApiServer(fault_rates={fault: 1.0}) as server:
        backend = backend_for(server, limits={"max_retries": 2})
        [error] = backend.chat([TextRequest((ChatMessage("user", "Hello"),))])
        backend.close()
    assert isinstance(error, TransientBackendError) and error.reason == "malformed_response"
    assert server.total_requests == 3


@pytest.mark.parametrize("fault", ["empty", "empty_image"])
def test_answers_with_empty_image_data_are_retried_within_the_budget(fault):
    with FakeApiServer(faults={1: fault}) as server:
        backend = backend_for(server, model="sim-t2i")
        [image] = backend.generate([GenerateRequest(PROMPT, 64, 48, seed=0)])
        backend.close()
    assert size_of(image) == (64, 48) and server.total_requests == 2
    with FakeApiServer(fault_rates={fault: 1.0}) as server:
        backend = backend_for(server, model="sim-t2i", limits={"max_retries": 1})
        [error] = backend.generate([GenerateRequest(PROMPT, 64, 48, seed=0)])
        backend.close()
    assert isinstance(error, TransientBackendError) and error.reason == "malformed_response"
    assert server.total_requests == 2


def test_info_names_model_host_and_overrides_never_the_key(server):
    backend = backend_for(server, temperature=0.3, extra_body={"top_k": 2})
    info = backend.info()
    backend.close()
    host = server.openai_url.split("//")[1].split("/")[0]
    assert (info.backend, info.model) == ("openai", "sim-llm")
    assert info.params == {"base_url": host, "temperature": 0.3, "extra_body": {"top_k": 2}}
    assert KEY not in repr(info)


# --- a whole run through the SDK ---------------------------------------------------------------


def _digit(body: dict, modulus: int) -> int:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()[0] % modulus


def _faults(path: str, body: dict) -> str | None:
    """Always the same fault for the same request: some gate questions keep failing (500),
    some inversions are refused."""
    text = json.dumps(body.get("messages", ""))
    if "Text-to-image prompt:" in text and _digit(body, 4) == 0:
        return "500"
    if "Forward instruction" in text and _digit(body, 3) == 0:
        return "refusal"
    return None


JUDGING_SIM = SimBackendConfig(scale=1.0, judge="tuned-gemini-2.0-flash")


def test_mine_through_the_openai_sdk_with_faults(small_config, tmp_path):
    import nhr

    # The server's model judges like the quickstart's validator (a plain Gaussian judge on
    # the simulator's continuous truth passes almost nothing at T = 4.7).
    with FakeApiServer(
        sim=JUDGING_SIM,
        fault_rates={"429": 0.05, "500": 0.05},
        fault_hook=_faults,
        retry_after="0",
    ) as server:
        api = {
            "backend": "openai",
            "base_url": server.openai_url,
            "api_key_env": "NHR_OPENAI_TEST_KEY",
            "limits": {"backoff_s": 0.01, "max_backoff_s": 0.02, "max_retries": 2},
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
    stages = {stage["stage"]: stage for stage in stats["stages"]}
    for name in ("design", "plausibility", "prefilter", "validate", "invert"):
        assert stages[name]["usage"]["requests"] > 0, name
        assert stages[name]["usage"]["input_tokens"] > 0, name
    assert sum(s["usage"].get("transport_retries", 0) for s in stages.values()) > 0
    # Gate questions that always answer 500 are retried by the backend only (one budget:
    # the stage does not send them again), then recorded failed by reason.
    assert stages["plausibility"]["retries_by_cause"].get("server_error", 0) > 0
    assert stages["plausibility"]["retries"] == 0
    assert stages["plausibility"]["failed"].get("server_error", 0) > 0
    assert stages["invert"]["failed"].get("refusal", 0) > 0
    assert set(server.keys_seen) == {f"Bearer {KEY}"}
    _assert_no_file_holds(tmp_path / "run", KEY)


def _assert_no_file_holds(root: Path, secret: str) -> None:
    files = [path for path in root.rglob("*") if path.is_file()]
    assert files
    leaks = [str(path) for path in files if secret.encode() in path.read_bytes()]
    assert not leaks


def test_reasoning_model_options(monkeypatch):
    from nhr.backends.configs import OpenAIBackendConfig
    from nhr.backends.openai import OpenAIBackend

    backend = OpenAIBackend(
        OpenAIBackendConfig(
            backend="openai",
            model="o3",
            base_url="http://127.0.0.1:9/v1",
            max_tokens_field="max_completion_tokens",
            send_temperature=False,
        )
    )
    options = backend._sampling(0.0, 100, 7)
    assert options["max_completion_tokens"] == 100 and "max_tokens" not in options
    assert "temperature" not in options and options["seed"] == 7
