"""Preflight: `nhr mine` checks every role's extra, key and server before any stage runs, and
stops at once (exit 2, one message naming every problem) instead of failing stage by stage."""

import importlib.util
import logging
import subprocess
import sys
import time

import pytest
import yaml

import nhr
from conftest import small_config_dict
from nhr.config import parse_config
from nhr.doctor import Check
from nhr.preflight import PreflightError, run_preflight

REFUSED = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, connection refused


def with_models(**roles):
    config = small_config_dict(run={"prompts": 4})
    config["models"].update(roles)
    return config


def test_an_unreachable_server_stops_the_run_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    designer = {"backend": "openai", "model": "qwen", "base_url": REFUSED}
    path.write_text(yaml.safe_dump(with_models(designer=designer)))
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "nhr.cli", "mine", str(path), "--run-dir", str(tmp_path / "r")],
            capture_output=True,
            text=True,
            timeout=60,  # today: 15 minutes of silent retrying in the design stage
        )
    except subprocess.TimeoutExpired:
        pytest.fail("an unreachable designer server did not stop the run within 60 s")
    assert time.monotonic() - started < 30
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"designer: cannot reach {REFUSED} (connection refused" in done.stderr
    assert "models.designer.base_url" in done.stderr
    assert not (tmp_path / "r").exists()  # nothing was mined, not even a run directory


def test_a_missing_extra_stops_the_run_before_any_stage(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def without_diffusers(name, *args, **kwargs):
        return None if name == "diffusers" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_diffusers)
    generator = {"backend": "diffusers", "model": "black-forest-labs/FLUX.1-schnell", "steps": 4}
    with pytest.raises(PreflightError) as stopped:
        nhr.mine(with_models(generator=generator), tmp_path / "r")
    message = str(stopped.value)
    assert "generator: diffusers:black-forest-labs/FLUX.1-schnell needs diffusers" in message
    assert "pip install 'nhr[diffusers]'" in message
    assert not list(tmp_path.glob("r/stages/*/*"))  # the design stage did not run


def test_every_problem_is_named_in_one_message(monkeypatch):
    monkeypatch.delenv("NHR_TEST_UNSET_KEY", raising=False)
    config = parse_config(
        with_models(
            designer={"backend": "openai", "model": "qwen", "base_url": REFUSED},
            inverter={"backend": "gemini", "model": "g", "api_key_env": "NHR_TEST_UNSET_KEY"},
        )
    )
    with pytest.raises(PreflightError) as stopped:
        run_preflight(config, timeout=2)
    message = str(stopped.value)
    assert message.startswith("preflight found 2 problem(s)")
    assert "designer: cannot reach" in message
    assert "inverter: NHR_TEST_UNSET_KEY is not set" in message
    assert "export NHR_TEST_UNSET_KEY=" in message


def test_one_key_missing_for_several_models_is_one_problem():
    from nhr.preflight import describe

    unset = "GEMINI_API_KEY is not set", "export GEMINI_API_KEY=<your key>"
    message = describe(
        [
            Check("designer, inverter", "key", False, *unset),
            Check("editor", "key", False, *unset),
            Check("validator", "server", False, "cannot reach http://x", "start it"),
            Check("gate, inverter", "key", False, *unset),
        ]
    )
    assert message.splitlines()[:5] == [
        "preflight found 2 problem(s), so no stage ran:",
        "  designer, inverter, editor, gate: GEMINI_API_KEY is not set",
        "    -> export GEMINI_API_KEY=<your key>",
        "  validator: cannot reach http://x",
        "    -> start it",
    ]


def test_a_sim_config_needs_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a sim-only preflight asked the network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    checks = run_preflight(parse_config(small_config_dict()))
    assert checks and all(check.ok for check in checks)


def test_roles_no_stage_uses_are_not_checked():
    unused = {"backend": "openai", "model": "qwen", "base_url": REFUSED}
    data = with_models(inverter=unused)
    data["invert"] = {"enabled": False}
    config = parse_config(data)
    checks = run_preflight(config)
    assert all(c.ok for c in checks) and not any("inverter" in c.roles for c in checks)


def test_gpu_memory_is_a_warning_not_a_stop(monkeypatch, caplog):
    def short_of_memory(roles, model):
        return Check(
            roles, "gpu", False, "needs 34 GB, GPU 0 has 20.0 of 80.0 GB free", stops_run=False
        )

    monkeypatch.setattr("nhr.doctor._gpu_check", short_of_memory)
    with caplog.at_level(logging.WARNING, logger="nhr.preflight"):
        run_preflight(parse_config(small_config_dict()))
    assert "needs 34 GB" in caplog.text


def test_skip_preflight_mines_without_it(tmp_path, monkeypatch):
    from nhr import cli

    def refuse(config):
        raise PreflightError("preflight ran")

    monkeypatch.setattr("nhr.preflight.run_preflight", refuse)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(with_models()))
    args = ["mine", str(path), "--run-dir", str(tmp_path / "r"), "--no-progress"]
    assert cli.main(args) == 2
    assert cli.main([*args, "--skip-preflight"]) == 0
