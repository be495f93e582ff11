import pytest
import yaml

from nhr.backends.sim import SimBackendConfig
from nhr.config import REQUIRED_ROLES, ROLES, ConfigError, load_config, parse_config

SIM_ROLES = {role: {"backend": "sim"} for role in ROLES}


def test_defaults_are_valid_and_have_26_buckets():
    config = parse_config({"models": "sim"})
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
        ({"brief": {"operations": ["fly_away"]}}, "unknown operation"),
        ({"brief": {"operations": ["change_haircut"]}}, "cannot be mined with the simulator"),
        ({"schedule": {"seeds_per_pair": "many"}}, "schedule.seeds_per_pair"),
        # strict values: YAML types its values, a quoted number or "yes" is a mistake
        ({"run": {"prompts": "12"}}, "run.prompts: Input should be a valid integer (got '12')"),
        ({"plausibility": {"enabled": "yes"}}, "plausibility.enabled"),
        ({"retry": {"backoff_s": "1"}}, "retry.backoff_s"),
        ({"models": {"validator": {"backend": "sim", "scale": "0.5"}}}, "models.validator"),
    ],
)
def test_bad_values_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config({**data, "models": SIM_ROLES | data.get("models", {})})
    assert fragment in str(info.value)


def test_the_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config([1, 2])


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        parse_config({"models": SIM_ROLES | {"editor": {"backend": "nope"}}})
    assert "models.editor" in str(info.value) and "sim" in str(info.value)


def test_yaml_native_values_still_work():
    """Strict, but an int is a float, and a bucket written [w, h] is a (w, h) tuple."""
    config = parse_config(
        {
            "models": "sim",
            "retry": {"backoff_s": 1},
            "generate": {"buckets": [[512, 768], [768, 512]]},
            "validate": {"adherence_threshold": 4},
        }
    )
    assert config.retry.backoff_s == 1.0 and isinstance(config.retry.backoff_s, float)
    assert config.generate.buckets == [(512, 768), (768, 512)]
    assert config.validate_.adherence_threshold == 4.0


@pytest.mark.parametrize("name", ["quickstart", "paper", "open", "small", "gemini"])
def test_the_written_config_reads_back_the_same(name, tmp_path):
    """RUN/config.yaml (to_dict, dumped as YAML) parses under strict mode to the same config."""
    config = load_config(f"configs/{name}.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert load_config(path) == config


def test_every_role_must_be_given():
    """A real config that forgets a role must not mine it with the simulator."""
    models = {role: {"backend": "openai", "model": "m"} for role in ROLES if role != "inverter"}
    with pytest.raises(ConfigError) as info:
        parse_config({"models": models})
    message = str(info.value)
    assert (
        "models.inverter: missing; every role needs a model (write `models: sim` for an "
        "all-simulator run)" in message
    )
    assert "models.validator" not in message
    with pytest.raises(ConfigError, match="models: missing; every role needs a model"):
        parse_config({"run": {"prompts": 4}})


def test_models_sim_is_every_role_on_the_simulator_and_is_written_out():
    config = parse_config({"models": "sim"})
    assert all(getattr(config.models, role) == SimBackendConfig() for role in REQUIRED_ROLES)
    written = config.to_dict()["models"]
    assert set(written) == set(ROLES) and written["inverter"]["backend"] == "sim"
    # optional roles stay unset unless a setting uses them
    assert all(written[role] is None for role in set(ROLES) - set(REQUIRED_ROLES))
    with pytest.raises(ConfigError, match="or `models: sim`"):
        parse_config({"models": "simulator"})


@pytest.mark.parametrize("text", ["", "# only a comment\n\n# and another\n"])
def test_an_empty_file_is_an_error(text, tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="is empty"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_use_dotted_paths(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run: {prompts: 3}\nmodels: sim\n")
    config = load_config(path, {"run.prompts": 9, "run.seed": 4})
    assert config.run.prompts == 9 and config.run.seed == 4
