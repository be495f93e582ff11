import pytest

from nhr.config import ConfigError, load_config, parse_config


def test_defaults_are_valid_and_have_26_buckets():
    config = parse_config({})
    assert len(config.generate.buckets) == 26
    assert (640, 1600) in config.generate.buckets and (1600, 640) in config.generate.buckets
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in config.generate.buckets)


def test_quickstart_config_loads():
    config = load_config("configs/quickstart.yaml")
    assert config.models.generator.backend == "sim"
    assert config.validate_.adherence_threshold == 4.7


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"run": {"promts": 5}}, "run.promts: unknown key"),
        ({"run": {"prompts": 0}}, "run.prompts"),
        ({"validate": {"adherence_threshold": 7}}, "validate.adherence_threshold"),
        ({"models": {"editor": {"backend": "nope"}}}, "models.editor"),
        ({"brief": {"operations": ["fly_away"]}}, "unknown operation"),
        ({"brief": {"operations": ["change_haircut"]}}, "cannot be mined with the simulator"),
        ({"schedule": {"seeds_per_pair": "many"}}, "schedule.seeds_per_pair"),
        ([1, 2], "top level must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert fragment in str(info.value)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        parse_config({"models": {"editor": {"backend": "nope"}}})
    assert "sim" in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_use_dotted_paths(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run: {prompts: 3}\n")
    config = load_config(path, {"run.prompts": 9, "run.seed": 4})
    assert config.run.prompts == 9 and config.run.seed == 4
