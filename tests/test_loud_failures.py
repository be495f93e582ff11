"""Loud failures: a broken backend stops the run (exit 3) without losing finished work, and a
run that releases nothing exits 3 with its top failure reasons."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

import nhr
from helpers import signature
from nhr.store import RunStore

EARLIER_STAGES = ("design", "generate", "plausibility", "schedule", "edit", "prefilter")


def mine(config_path, run_dir, *extra):
    return subprocess.run(
        [sys.executable, "-m", "nhr.cli", "mine", str(config_path), "--run-dir", str(run_dir)]
        + ["--no-progress", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def validator(**faults):
    return {
        "backend": "sim",
        "model": "sim-validator",
        "score_noise": 0.62,
        "faults": faults,
    }


def test_a_validator_that_always_times_out_stops_the_run_and_a_rerun_resumes(
    tmp_path, small_config
):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(small_config(models={"validator": validator(timeout=1.0)})))
    run_dir = tmp_path / "run"

    done = mine(path, run_dir)

    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("nhr: error: stage 'validate' stopped: the first 20 items")
    for fragment in ("validator model", "sim-validator", "timeout", "simulated timeout"):
        assert fragment in line
    assert "models.validator.limits.timeout_s" in line and "run the same command again" in line
    store = RunStore(run_dir)
    shards = int(store.read_marker("design")["shards"])
    for stage in EARLIER_STAGES[1:]:  # every shard (or the whole of a global stage) kept
        assert store.is_done(stage) or store.done_shards(stage) == list(range(shards)), stage
    assert store.done_shards("validate") == []  # no shard kept with rows that all failed
    assert not store.is_done("export")

    # The fix: the validator answers again. The same command resumes from validate.
    path.write_text(yaml.safe_dump(small_config()))
    edits_before = {s: store.read_marker("edit", s)["table_sha256"] for s in range(shards)}
    done = mine(path, run_dir)

    assert done.returncode == 0, done.stderr
    assert store.is_done("export")
    assert {s: store.read_marker("edit", s)["table_sha256"] for s in range(shards)} == edits_before
    assert mine(path, tmp_path / "clean").returncode == 0  # the same as an unbroken run
    assert signature(run_dir) == signature(tmp_path / "clean")


def test_a_run_that_releases_nothing_exits_3_with_its_top_reasons(tmp_path, small_config):
    config = small_config(
        models={"validator": validator(timeout=1.0)},
        retry={"stop_after_failures": 0, "backoff_s": 0.0},
        run={"prompts": 4},
    )
    path = tmp_path / "nothing.yaml"
    path.write_text(yaml.safe_dump(config))

    done = mine(path, tmp_path / "run")

    assert done.returncode == 3, done.stderr
    assert "mined 0 triplets" in done.stdout
    assert "Traceback" not in done.stderr
    assert "released no triplet" in done.stderr
    [validate] = [line for line in done.stderr.splitlines() if line.strip().startswith("validate:")]
    assert "failed: timeout x" in validate

    # From Python the run returns normally; its stats say why nothing was released.
    result = nhr.mine(config, tmp_path / "run")
    assert result.stats["complete"] and result.stats["dataset"]["rows"] == 0
    stages = {s["stage"]: s for s in result.stats["stages"]}
    assert set(stages["validate"]["failed"]) == {"timeout"}
    assert stages["validate"]["retries_by_cause"]["timeout"] > 0


def test_an_api_validator_that_always_answers_503_stops_the_run(
    tmp_path, small_config, monkeypatch
):
    """Through the real openai SDK: every validator request answers 503. Each item costs
    max_retries + 1 requests (never more), and the run stops once 20 items have failed."""
    import pytest

    pytest.importorskip("openai")
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "backends"))
    from fake_api_server import FakeApiServer

    from nhr.calls import BrokenBackendError

    monkeypatch.setenv("NHR_LOUD_TEST_KEY", "sk-loud")

    def always_503_for_the_validator(path, body):
        return "503" if body.get("model") == "sim-validator" else None

    with FakeApiServer(fault_hook=always_503_for_the_validator) as server:
        config = small_config()
        config["models"]["validator"] = {
            "backend": "openai",
            "model": "sim-validator",
            "base_url": server.openai_url,
            "api_key_env": "NHR_LOUD_TEST_KEY",
            "limits": {"max_retries": 1, "backoff_s": 0.0, "max_backoff_s": 0.0},
        }
        with pytest.raises(BrokenBackendError) as caught:
            nhr.mine(config, tmp_path / "run")
    error = caught.value
    assert (error.stage, error.role, error.reason) == ("validate", "validator", "server_error")
    assert "sim-validator" in str(error) and "HTTP 503" in str(error)
    sent = Counter(
        json.dumps(body, sort_keys=True)
        for _, body in server.bodies
        if body.get("model") == "sim-validator"
    )
    assert set(sent.values()) == {2}  # max_retries + 1 requests each, never more
    assert 20 <= len(sent) < 20 + 8  # stopped after the batch (of 8) holding the 20th failure
