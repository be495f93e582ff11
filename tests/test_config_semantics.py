"""What each config setting changes: every leaf is classified in its config class, and a
resume is refused exactly when a setting that changes rows already mined differs."""

import copy
import typing
from types import SimpleNamespace

import pytest
import yaml
from pydantic import BaseModel, Field

import nhr
from nhr.backends import FAMILIES
from nhr.backends.configs import OPERATIONAL, ROLE, affects_role
from nhr.config import (
    REQUIRED_ROLES,
    ROLES,
    ModelsSection,
    NhrConfig,
    leaf_effects,
    parse_config,
)
from nhr.pipeline import ALL_STAGE_NAMES, ROLE_STAGE, build_stages, config_changes
from nhr.run import RunConfigError
from nhr.stages.design import design_request


def sim_config(**sections) -> dict:
    data = {"models": "sim", **sections}
    return parse_config(data).to_dict()


def with_role(role: str, entry: dict) -> dict:
    """The resolved all-simulator config with one role on another backend."""
    models = {name: {"backend": "sim"} for name in REQUIRED_ROLES}
    return parse_config({"models": {**models, role: entry}}).to_dict()


def changed(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[leaf] = value
    return data


# --- every leaf is classified -----------------------------------------------------------------


def test_every_leaf_of_every_config_class_is_classified():
    leaves = leaf_effects(NhrConfig)
    unclassified = sorted({key for key, effect in leaves if effect is None})
    assert not unclassified, (
        f"say what these settings change (see nhr.backends.configs): {unclassified}"
    )
    for key, effect in leaves:
        if key.startswith("models."):
            assert effect in (ROLE, OPERATIONAL), key  # a role's stages come from ROLE_STAGE
        else:
            assert effect == OPERATIONAL or effect in ALL_STAGE_NAMES, (key, effect)


def test_the_walk_covers_every_backend_family_and_nested_section():
    keys = {key for key, _ in leaf_effects(NhrConfig)}
    union = typing.get_args(ModelsSection.model_fields["designer"].annotation)
    families = {typing.get_args(member.model_fields["backend"].annotation)[0] for member in union}
    assert families == set(FAMILIES)
    for key in (
        "models.validator.limits.timeout_s",  # ApiLimits
        "models.validator.prices.per_image",  # Prices
        "models.editor.loras[].weight",  # LoraAdapter, inside a list
        "models.validator.faults.latency_s",  # SimFaults
        "models.editor.editor_errors.noop",  # SimEditorErrors
        "schedule.budget.cost",  # BudgetSection
        "prefilter.low_level.diff_threshold",  # LowLevelCheck
        "brief.operations",  # a list-or-mapping setting is one leaf
    ):
        assert key in keys, key


def test_an_unmarked_field_is_reported():
    class Section(BaseModel):
        marked: int = Field(0, json_schema_extra=affects_role())
        forgotten: int = 0

    assert dict(leaf_effects(Section)) == {"marked": ROLE, "forgotten": None}


def test_a_role_changes_the_first_stage_that_uses_it():
    assert set(ROLE_STAGE) == set(ROLES)
    # runs that use every role between them: optional roles (second judge, photo describer)
    runs = [
        build_stages(parse_config({"models": "sim", "validate": {"second_judge": True}})),
        build_stages(parse_config({"models": "sim", "sources": {"kind": "images", "path": "p"}})),
    ]
    for role, stage in ROLE_STAGE.items():
        firsts = {
            next(s.name for s in stages if role in s.roles)
            for stages in runs
            if any(role in s.roles for s in stages)
        }
        assert firsts == {stage}, role
    assert ROLE_STAGE["validator"] == "validate"  # also used by backward and compose


# --- what is a change -------------------------------------------------------------------------

OPENAI = {"backend": "openai", "model": "judge", "base_url": "http://localhost:8000/v1"}


@pytest.mark.parametrize(
    "key,value",
    [
        ("models.validator.limits.timeout_s", 600.0),
        ("models.validator.limits.max_concurrency", 2),
        ("models.validator.limits.requests_per_minute", 100),
        ("models.validator.limits.tokens_per_minute", 10_000),
        ("models.validator.limits.max_retries", 12),
        ("models.validator.limits.backoff_s", 5.0),
        ("models.validator.prices", {"per_image": 0.04}),
        ("models.validator.api_key_env", "MY_KEY"),
        ("models.validator.base_url", "http://localhost:8001/v1"),
    ],
)
def test_api_limits_prices_and_keys_are_operational(key, value):
    """A run that hit timeouts raises timeout_s and resumes without --redo-from."""
    old = with_role("validator", OPENAI)
    assert config_changes(old, changed(old, key, value)) == []


@pytest.mark.parametrize(
    "entry,key,value",
    [
        ({"backend": "diffusers", "model": "m"}, "device", "cuda:1"),
        ({"backend": "diffusers", "model": "m"}, "cpu_offload", "model"),
        ({"backend": "diffusers", "model": "m"}, "min_gpu_memory_gb", 20.0),
        ({"backend": "transformers", "model": "m"}, "device", "cpu"),
        ({"backend": "transformers", "model": "m"}, "min_gpu_memory_gb", 20.0),
        ({"backend": "gemini", "model": "m"}, "vertex", True),
        ({"backend": "sim"}, "faults.latency_s", 0.5),
    ],
)
def test_where_a_model_runs_is_operational(entry, key, value):
    old = with_role("editor", entry)
    new = with_role("editor", changed(old["models"]["editor"], key, value))
    assert config_changes(old, new) == []


@pytest.mark.parametrize(
    "section,values",
    [
        ("retry", {"max_attempts": 9}),
        ("retry", {"unparseable_attempts": 6, "backoff_s": 0.5, "max_backoff_s": 5.0}),
        ("generate", {"batch_size": 1}),
        ("plausibility", {"batch_size": 1}),
        ("edit", {"batch_size": 1}),
        ("prefilter", {"batch_size": 1}),
        ("validate", {"batch_size": 1}),
        ("invert", {"batch_size": 1}),
        ("backward", {"batch_size": 1}),
        ("compose", {"batch_size": 1}),
        ("run", {"request_cache": "on", "run_dir": "elsewhere"}),
    ],
)
def test_retry_policy_and_batch_sizes_may_change_freely(section, values):
    assert config_changes(sim_config(), sim_config(**{section: values})) == []


@pytest.mark.parametrize(
    "data,stage,key",
    [
        ({"design": {"batch_size": 7}}, "design", "design.batch_size"),
        ({"generate": {"images_per_prompt": 3}}, "generate", "generate.images_per_prompt"),
        ({"validate": {"adherence_threshold": 4.0}}, "validate", "validate.adherence_threshold"),
        ({"backward": {"enabled": False}}, "invert", "backward.enabled"),
        ({"export": {"rows_per_file": 10}}, "export", "export.rows_per_file"),
    ],
)
def test_settings_that_change_rows_name_their_stage(data, stage, key):
    changes = config_changes(sim_config(), sim_config(**data))
    assert [(s, k) for s, k, _, _ in changes] == [(stage, key)]


@pytest.mark.parametrize(
    "role,key,value,stage",
    [
        ("validator", "model", "another-judge", "validate"),
        ("validator", "temperature", 0.0, "validate"),
        ("inverter", "extra_body", {"top_p": 0.9}, "invert"),
        ("gate", "max_tokens", 8, "plausibility"),
    ],
)
def test_model_settings_change_the_first_stage_of_their_role(role, key, value, stage):
    old = with_role(role, OPENAI)
    assert {s for s, *_ in config_changes(old, changed(old, f"models.{role}.{key}", value))} == {
        stage
    }


def test_sim_fault_rates_change_the_answers():
    old = sim_config()
    for rate in ("exception", "timeout", "malformed", "refusal"):
        new = changed(old, f"models.generator.faults.{rate}", 0.1)
        assert [c[0] for c in config_changes(old, new)] == ["generate"], rate


def test_diffusers_dtype_changes_the_images():
    old = with_role("generator", {"backend": "diffusers", "model": "m"})
    new = changed(old, "models.generator.dtype", "float32")
    assert [c[:2] for c in config_changes(old, new)] == [("generate", "models.generator.dtype")]


def test_a_role_moved_to_another_backend_is_a_change():
    old, new = sim_config(), with_role("validator", OPENAI)
    changes = config_changes(old, new)
    assert changes and {c[0] for c in changes} == {"validate"}
    assert ("validate", "models.validator.backend", "sim", "openai") in changes


def test_a_key_this_version_does_not_know_may_change_anything():
    old = changed(sim_config(), "design.retired_option", 3)
    assert [c[:2] for c in config_changes(old, sim_config())] == [
        ("design", "design.retired_option")
    ]


def test_the_design_batch_size_is_written_into_the_design_prompt():
    """Why design.batch_size is not operational, unlike every other batch size."""

    def prompt(batch_size: int) -> str:
        config = parse_config(
            {"models": "sim", "run": {"prompts": 1000}, "design": {"batch_size": batch_size}}
        )
        return design_request(SimpleNamespace(config=config), 0).messages[0].content

    assert prompt(10) != prompt(20)


# --- on a run directory -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, small_config):
    run_dir = tmp_path_factory.mktemp("semantics")
    nhr.mine(small_config(run={"prompts": 4}), run_dir)
    return run_dir


def test_a_changed_design_batch_size_refuses_to_resume(tiny_run, small_config):
    with pytest.raises(RunConfigError) as info:
        nhr.mine(small_config(run={"prompts": 4}, design={"batch_size": 3}), tiny_run)
    message = str(info.value)
    assert "design.batch_size: 8 -> 3" in message and "--redo-from design" in message


def test_operational_changes_resume_a_finished_run(tiny_run, small_config):
    config = small_config(
        run={"prompts": 4},
        retry={"max_attempts": 9},
        generate={"batch_size": 1},
        models={"validator": {"faults": {"latency_s": 0.001}}},
    )
    assert nhr.mine(config, tiny_run).stats["complete"]


def test_the_run_config_reads_back_under_strict_checks(tiny_run):
    """RUN/config.yaml, as the store writes it, is a valid config with every role written out."""
    written = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert set(written["models"]) == set(ROLES)
    assert parse_config(written).to_dict() == written


@pytest.mark.parametrize(
    "export, message",
    [
        ({"license": "my-own-licence"}, "not a Hugging Face licence id"),
        ({"license": "cc-by-4"}, "did you mean cc-by-4.0"),
        ({"license": "other"}, "other needs export.license_name"),
        ({"license": "mit", "license_name": "x"}, "go with export.license: other"),
    ],
)
def test_a_licence_the_hub_would_refuse_is_a_config_error(export, message):
    from nhr.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config({"models": "sim", "export": export})


def test_another_licence_is_named_and_linked_in_the_card_metadata():
    from nhr.config import parse_config
    from nhr.exports.card import card_metadata

    export = {"license": "other", "license_name": "lab-licence", "license_link": "LICENSE"}
    config = parse_config({"models": "sim", "export": export})
    metadata = card_metadata({"train": 3}, config.export)
    assert [metadata[k] for k in export] == ["other", "lab-licence", "LICENSE"]
    assert (
        card_metadata({"train": 3}, parse_config({"models": "sim"}).export).get("license") is None
    )
