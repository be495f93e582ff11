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
