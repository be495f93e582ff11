"""The stage order and what each stage depends on; nothing model- or executor-specific.

A stage's output depends on its own config keys and on everything upstream, so a config
change invalidates the first stage it touches and every stage after it. Which stage a key
touches is written next to the key, in the config classes (see nhr.config.setting_effect).
"""

from __future__ import annotations

from typing import Any

from nhr.backends.configs import OPERATIONAL, ROLE
from nhr.config import NhrConfig, setting_effect
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


# The stage whose rows a `models.<role>` setting changes first: the first stage using the role
# (the validator also serves backward and compose, which come later, so they follow anyway).
ROLE_STAGE: dict[str, str] = {
    "designer": "design",
    "generator": "generate",
    "gate": "plausibility",
    "editor": "edit",
    "prefilter": "prefilter",
    "validator": "validate",
    "inverter": "invert",
}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def stage_of_setting(key: str, config: dict[str, Any]) -> str | None:
    """The first stage whose rows the setting `key` (dotted, of the resolved config `config`)
    changes, or None when it is operational."""
    effect = setting_effect(key, config)
    if effect == OPERATIONAL:
        return None
    if effect == ROLE:
        return ROLE_STAGE[key.split(".")[1]]
    if effect is None:  # a key this version does not know (an older run's config): it may
        return ALL_STAGE_NAMES[0]  # have changed anything
    return effect


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(stage, key, old value, new value) for every output-affecting difference, in stage order.

    Stages are ordered by ALL_STAGE_NAMES; a change to an augmentation stage is reported
    against `invert` when the order itself changed (the key `augment.order` belongs to it).
    """
    flat_old, flat_new = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if flat_old.get(key) == flat_new.get(key):
            continue
        stage = stage_of_setting(key, new if key in flat_new else old)
        if stage is not None:
            changes.append((stage, key, flat_old.get(key), flat_new.get(key)))
    return sorted(changes, key=lambda change: ALL_STAGE_NAMES.index(change[0]))
