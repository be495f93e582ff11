"""The stage order and what each stage depends on; nothing model- or executor-specific.

A stage's output depends on its own config keys and on everything upstream, so a config
change invalidates the first stage it touches and every stage after it.
"""

from __future__ import annotations

from typing import Any

from nhr.config import NhrConfig
from nhr.stages.backward import BackwardStage
from nhr.stages.base import Stage
from nhr.stages.compose import ComposeStage
from nhr.stages.design import DesignStage
from nhr.stages.edit import EditStage
from nhr.stages.generate import GenerateStage
from nhr.stages.invert import InvertStage
from nhr.stages.plausibility import PlausibilityStage
from nhr.stages.prefilter import PrefilterStage
from nhr.stages.schedule import ScheduleStage
from nhr.stages.select import SelectStage
from nhr.stages.validate import ValidateStage

EXPORT = "export"
_AUGMENT = {"invert": InvertStage, "backward": BackwardStage, "compose": ComposeStage}
# Every stage name a run directory may hold, in the default order.
ALL_STAGE_NAMES: tuple[str, ...] = (
    "design",
    "generate",
    "plausibility",
    "schedule",
    "edit",
    "prefilter",
    "validate",
    "select",
    "invert",
    "backward",
    "compose",
    EXPORT,
)


def build_stages(config: NhrConfig) -> list[Stage]:
    """The stages of a run, in order. Augmentation stages follow `augment.order`; each reads
    the triplet set of the stage before it, so disabled ones simply drop out of the chain."""
    stages: list[Stage] = [
        DesignStage(),
        GenerateStage(),
        PlausibilityStage(),
        ScheduleStage(),
        EditStage(),
        PrefilterStage(),
        ValidateStage(),
        SelectStage(),
    ]
    enabled = {
        "invert": config.invert.enabled,
        "backward": config.backward.enabled and config.invert.enabled,
        "compose": config.compose.enabled and config.invert.enabled,
    }
    previous = "select"
    for name in config.augment.order:
        if enabled[name]:
            stages.append(_AUGMENT[name](previous))
            previous = name
    return stages


def release_stage(config: NhrConfig) -> str:
    """The stage whose triplet table holds the released set."""
    return build_stages(config)[-1].name


def stage_names(config: NhrConfig) -> tuple[str, ...]:
    return tuple(stage.name for stage in build_stages(config)) + (EXPORT,)


# Config key prefixes whose values change each stage's rows. Keys not listed anywhere (retry
# policy, batch sizes, simulated latency, run_dir) change how a run executes, not what it
# produces, so they may differ between a run and its resume.
STAGE_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "design": ("run.seed", "run.prompts", "run.shard_size", "brief", "models.designer", "design"),
    "generate": ("models.generator", "generate"),
    "plausibility": ("models.gate", "plausibility"),
    "schedule": ("schedule",),
    "edit": ("models.editor", "edit"),
    "prefilter": ("models.prefilter", "prefilter"),
    "validate": ("models.validator", "validate"),
    "select": (),
    "invert": ("augment", "models.inverter", "invert", "backward.enabled", "compose.enabled"),
    "backward": ("backward",),
    "compose": ("compose",),
    EXPORT: ("export",),
}
_OPERATIONAL_SUFFIXES = ("batch_size", "latency_s")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def _stage_of(key: str) -> str | None:
    if key.endswith(_OPERATIONAL_SUFFIXES):
        return None
    for stage, prefixes in STAGE_CONFIG_KEYS.items():
        if any(key == p or key.startswith(p + ".") for p in prefixes):
            return stage
    return None


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(stage, key, old value, new value) for every output-affecting difference, in stage order.

    Stages are ordered by ALL_STAGE_NAMES; a change to an augmentation stage is reported
    against `invert` when the order itself changed (the key `augment.order` belongs to it).
    """
    flat_old, flat_new = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(flat_old) | set(flat_new)):
        stage = _stage_of(key)
        if stage is not None and flat_old.get(key) != flat_new.get(key):
            changes.append((stage, key, flat_old.get(key), flat_new.get(key)))
    return sorted(changes, key=lambda change: ALL_STAGE_NAMES.index(change[0]))
