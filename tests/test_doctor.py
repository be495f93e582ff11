"""`nhr doctor`: names what is missing and how to fix it, without spending anything."""

import http.server
import subprocess
import sys
import threading

import pytest

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
    """A local server answering GET /v1/models: 200, or 401 for the key 'bad'."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            status = 401 if self.headers.get("Authorization") == "Bearer bad" else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"data": [{"id": "m"}]}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def openai_config(base_url):
    return parse_config(
        {"models": {"validator": {"backend": "openai", "model": "m", "base_url": base_url}}}
    )


def test_servers_are_asked_for_their_models(models_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    checks = {c.what: c for c in run_doctor(openai_config(models_server)) if c.roles == "validator"}
    assert checks["key"].ok and "local server" in checks["key"].detail
    assert checks["server"].ok
    monkeypatch.setenv("OPENAI_API_KEY", "bad")
    checks = {c.what: c for c in run_doctor(openai_config(models_server)) if c.roles == "validator"}
    assert not checks["server"].ok and "refused the key" in checks["server"].detail
    assert "bad" not in checks["server"].detail + checks["server"].fix


def test_an_unreachable_server_is_reported(monkeypatch):
    checks = run_doctor(openai_config("http://127.0.0.1:9/v1"), timeout=2)
    server = next(c for c in checks if c.what == "server")
    assert not server.ok and "127.0.0.1:9/v1/models" in server.detail
    assert run_doctor(openai_config("http://127.0.0.1:9/v1"), network=False)  # offline: no ask


def test_gpu_memory_is_checked_where_a_model_asks_for_it():
    checks = run_doctor(load_config("configs/paper.yaml"), network=False)
    gpu = [c for c in checks if c.what == "gpu"]
    assert {c.roles for c in gpu} == {"generator", "gate", "editor"}
    import torch

    if not torch.cuda.is_available():
        assert all(not c.ok and "none is visible" in c.detail for c in gpu)
