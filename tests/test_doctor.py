"""`nhr doctor`: names what is missing and how to fix it, without spending anything."""

import http.server
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import yaml

from conftest import QUICKSTART
from nhr.config import load_config, parse_config
from nhr.doctor import run_doctor


def doctor(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "nhr.cli", "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_quickstart_needs_nothing():
    done = doctor("configs/quickstart.yaml")
    assert done.returncode == 0 and "all checks passed" in done.stdout


def test_a_missing_key_names_the_variable(monkeypatch):
    import os

    env = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
    done = doctor("configs/gemini.yaml", env=env)
    assert done.returncode == 1
    assert "GEMINI_API_KEY is not set" in done.stdout
    assert "export GEMINI_API_KEY=" in done.stdout


@pytest.fixture
def models_server():
    """A local server answering the free model requests, counting them: OpenAI's GET
    /v1/models (it serves "m"; 401 for the key 'bad'; /nolist/v1/models answers 404,
    /broken/v1/models 500, /locked/v1/models wants the key 'right') and Gemini's GET /v1beta/models/NAME (it knows
    "gemini-ok"; 400 API_KEY_INVALID for the key 'bad')."""
    gets = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            gets.append(self.path)
            status, body = 200, b'{"data": [{"id": "m"}, {"id": "llama3:latest"}]}'
            if self.path.startswith("/nolist/"):
                status, body = 404, b"404 page not found"
            elif self.path.startswith("/broken/"):
                status, body = 500, b"Internal Server Error"
            elif self.path.startswith("/v1beta/"):
                status, body = 200, b'{"name": "models/gemini-ok"}'
                if self.headers.get("x-goog-api-key") == "bad":
                    status, body = (
                        400,
                        b'{"error": {"status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}}',
                    )
                elif self.path != "/v1beta/models/gemini-ok":
                    status, body = 404, b'{"error": {"code": 404, "status": "NOT_FOUND"}}'
            elif self.headers.get("Authorization") == "Bearer bad" or (
                self.path.startswith("/locked/") and self.headers["Authorization"] != "Bearer right"
            ):
                status = 401
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}/v1", gets=gets)
    server.shutdown()


def config_with(**roles):
    """The quickstart config (every role the simulator) with some roles replaced."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["models"].update(roles)
    return parse_config(data)


def openai_config(base_url, model="m"):
    return config_with(validator={"backend": "openai", "model": model, "base_url": base_url})


def validator_checks(config):
    return {c.what: c for c in run_doctor(config) if c.roles == "validator"}


def test_servers_are_asked_for_their_models(models_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    checks = {
        c.what: c for c in run_doctor(openai_config(models_server.url)) if c.roles == "validator"
    }
    assert checks["key"].ok and "local server" in checks["key"].detail
    assert checks["server"].ok
    monkeypatch.setenv("OPENAI_API_KEY", "bad")
    checks = {
        c.what: c for c in run_doctor(openai_config(models_server.url)) if c.roles == "validator"
    }
    assert not checks["server"].ok and "refused the key" in checks["server"].detail
    assert "bad" not in checks["server"].detail + checks["server"].fix


def test_a_server_that_wants_a_key_says_so(models_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    locked = openai_config(models_server.url.replace("/v1", "/locked/v1"))
    server = validator_checks(locked)["server"]
    assert not server.ok and "asks for a key (HTTP 401)" in server.detail
    assert server.fix == "export OPENAI_API_KEY=<the server's key>"


def test_a_model_the_server_does_not_serve_is_named(models_server):
    checks = validator_checks(openai_config(models_server.url, "qwen2.5-vl-72b"))
    model = checks["model"]
    assert not model.ok and "server" not in checks
    assert model.detail == (
        f"model 'qwen2.5-vl-72b' is not served by {models_server.url} (it serves: m, llama3:latest)"
    )
    assert "models.validator.model" in model.fix
    assert checks_pass(openai_config(models_server.url, "llama3"))  # Ollama's implicit :latest
    assert checks_pass(openai_config(models_server.url, "m:nitro"))  # OpenRouter's variants
    assert not checks_pass(openai_config(models_server.url, "llama3:70b"))


def checks_pass(config):
    return all(c.ok for c in run_doctor(config))


def test_a_server_without_a_model_listing_is_not_failed(models_server):
    server = validator_checks(openai_config(models_server.url.replace("/v1", "/nolist/v1")))[
        "server"
    ]
    assert server.ok and "cannot check that it serves 'm'" in server.detail
    broken = validator_checks(openai_config(models_server.url.replace("/v1", "/broken/v1")))
    # a failing listing is reported, but preflight only warns: the calls may still work
    assert not broken["server"].ok and not broken["server"].stops_run


def test_each_server_is_asked_once(models_server):
    api = {"backend": "openai", "base_url": models_server.url}
    config = config_with(
        designer={**api, "model": "m"}, validator={**api, "model": "m", "temperature": 0.5}
    )
    checks = run_doctor(config)
    assert [c.roles for c in checks if c.what == "server" and c.ok] == ["designer", "validator"]
    assert models_server.gets == ["/v1/models"]


def test_gemini_models_are_looked_up(models_server, monkeypatch):
    base = models_server.url.removesuffix("/v1")

    def gemini(model):
        return config_with(validator={"backend": "gemini", "model": model, "base_url": base})

    monkeypatch.setenv("GEMINI_API_KEY", "good")
    assert validator_checks(gemini("gemini-ok"))["server"].ok
    missing = validator_checks(gemini("gemini-9"))["model"]
    assert not missing.ok and "model 'gemini-9' is not found" in missing.detail
    monkeypatch.setenv("GEMINI_API_KEY", "bad")
    refused = validator_checks(gemini("gemini-ok"))["server"]
    assert not refused.ok and "refused the key" in refused.detail


def test_an_unreachable_server_is_reported(monkeypatch):
    checks = run_doctor(openai_config("http://127.0.0.1:9/v1"), timeout=2)
    server = next(c for c in checks if c.what == "server")
    assert not server.ok and "http://127.0.0.1:9/v1 (connection refused" in server.detail
    assert "models.validator.base_url" in server.fix
    assert run_doctor(openai_config("http://127.0.0.1:9/v1"), network=False)  # offline: no ask


def test_a_server_that_never_answers_is_given_up_on_after_the_timeout():
    import socket
    import time

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        started = time.monotonic()
        server = next(c for c in run_doctor(openai_config(url), timeout=1) if c.what == "server")
    assert time.monotonic() - started < 5
    assert not server.ok and server.detail == f"cannot reach {url} (no answer within 1 s)"


def test_gpu_memory_is_checked_where_a_model_asks_for_it():
    checks = run_doctor(load_config("configs/paper.yaml"), network=False)
    gpu = [c for c in checks if c.what == "gpu"]
    assert {c.roles for c in gpu} == {"generator", "gate", "editor"}
    import torch

    if not torch.cuda.is_available():
        assert all(not c.ok and "none is visible" in c.detail for c in gpu)
