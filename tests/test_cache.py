"""The request cache: a redo or a resume serves known answers from RUN/cache."""

import yaml

import nhr
from helpers import finish, kill_at_write, signature


def stage(stats, name):
    return next(s for s in stats["stages"] if s["stage"] == name)


def test_redo_serves_every_known_answer_from_the_cache(tmp_path, small_config):
    config = small_config(run={"request_cache": "on"})
    first = nhr.mine(config, tmp_path)
    before = signature(tmp_path)
    assert list((tmp_path / "cache").rglob("*.json"))
    again = nhr.mine(config, tmp_path, redo_from="validate").stats
    validate = stage(again, "validate")
    assert validate["usage"]["cache_hits"] == validate["model_calls"] > 0
    assert signature(tmp_path) == before
    assert stage(first.stats, "validate")["usage"].get("cache_hits", 0) == 0


def test_sim_answers_are_not_cached_by_default(tmp_path, small_config):
    nhr.mine(small_config(run={"prompts": 4}), tmp_path)
    assert not (tmp_path / "cache").exists()


def test_kill_while_caching_then_resume(tmp_path, small_config):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config(run={"request_cache": "on"})))
    nhr.mine(str(config), tmp_path / "reference")
    run_dir = tmp_path / "run"
    kill_at_write(config, run_dir, "/cache/", 60)
    finish(config, run_dir)
    assert signature(run_dir) == signature(tmp_path / "reference")


# The request-cache key is a documented, canonical serialization (nhr/cache.py), not pickle:
# the same request built anywhere gets the same key, in any process, on any Python.
KEY_OF_KNOWN_REQUEST = "6b6e81e79acad98bd126f012620852c1be8af25f20599e0d0f1dd1ec840011e7"
BUILD_REQUEST = """
from nhr.backends.base import ChatMessage, TextRequest
request = TextRequest(
    messages=(
        ChatMessage("system", "You design prompts."),
        ChatMessage("user", "Write 3 prompts about cats."),
    ),
    temperature=0.7,
    max_tokens=512,
    seed=42,
)
"""


def known_key(namespace):
    from nhr.cache import request_key

    exec(BUILD_REQUEST, namespace)
    identity = {"backend": "sim", "model": "sim-llm", "params": {}}
    return request_key(identity, "chat", namespace["request"])


def test_the_cache_key_of_a_known_request_is_pinned():
    assert known_key({}) == KEY_OF_KNOWN_REQUEST


def test_equal_requests_built_in_another_process_get_the_same_key():
    import subprocess
    import sys

    code = (
        BUILD_REQUEST
        + "from nhr.cache import request_key\n"
        + "print(request_key({'backend': 'sim', 'model': 'sim-llm', 'params': {}}, 'chat', request))"
    )
    # a different hash seed: nothing may depend on the process's str hashing
    env = {**__import__("os").environ, "PYTHONHASHSEED": "123"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == known_key({}), done.stderr


def test_the_key_covers_image_bytes_and_model_identity():
    from nhr.backends.base import EditRequest
    from nhr.cache import request_key

    identity = {"backend": "sim", "model": "sim-editor", "params": {"steps": 4}}
    request = EditRequest(image=b"png bytes", instruction="add a cat", seed=1)
    key = request_key(identity, "edit", request)
    assert key == request_key(identity, "edit", EditRequest(b"png bytes", "add a cat", 1))
    assert key != request_key(identity, "edit", EditRequest(b"other bytes", "add a cat", 1))
    assert key != request_key({**identity, "params": {"steps": 8}}, "edit", request)
    assert key != request_key(identity, "generate", request)


def test_a_damaged_cached_image_is_a_miss(tmp_path, small_config):
    config = small_config(run={"request_cache": "on", "prompts": 8})
    nhr.mine(config, tmp_path)
    before = signature(tmp_path)
    edited = before[0][2]
    import hashlib

    digest = hashlib.sha256(edited).hexdigest()
    (tmp_path / "images" / digest[:2] / f"{digest}.png").write_bytes(b"garbage" * 99)
    nhr.mine(config, tmp_path, redo_from="edit")
    assert signature(tmp_path) == before
