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
from nhr.stages.edit import EditStage
from nhr.stages.generate import source_stages
from nhr.stages.invert import InvertStage
from nhr.stages.plausibility import PlausibilityStage
from nhr.stages.prefilter import PrefilterStage
from nhr.stages.schedule import AdaptiveScheduleStage, ScheduleStage
from nhr.stages.select import SelectStage
from nhr.stages.validate import ValidateStage
from nhr.stats import StageStats

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
        *source_stages(config),  # design + generate, or their photo-source versions
        PlausibilityStage(),
        *editing_stages(config),  # schedule, edit, prefilter, validate (per round: adaptive)
        SelectStage(config),
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


def editing_stages(config: NhrConfig) -> list[Stage]:
    """schedule, edit, prefilter, validate: once, or under adaptive once per round."""
    if config.schedule.policy == "adaptive":
        return round_stages(config)
    return [ScheduleStage(), EditStage(), PrefilterStage(), ValidateStage(config)]


# -- adaptive rounds ----------------------------------------------------------------------------
# Under schedule.policy: adaptive, schedule, edit, prefilter and validate run once per round.
# Round r of M writes its tables as `<stage>@r`, the last round under the plain name; every
# round's table is cumulative (the round before's rows, then its own), so the plain tables
# hold every round and select, the augmentation stages, the export, the report and the tools
# read them exactly as under uniform. Rounds are stages like any other: markers, resume,
# verify, --redo-from and the executors need nothing of their own.
ROUND_STAGES = ("schedule", "edit", "prefilter", "validate")
ROUND_MARK = "@"


def round_name(stage: str, round_: int, rounds: int) -> str:
    return stage if round_ == rounds else f"{stage}{ROUND_MARK}{round_}"


def base_name(stage: str) -> str:
    """`edit@2` -> `edit`: the stage whose code, schema and settings a round stage has."""
    return stage.split(ROUND_MARK, 1)[0]


def round_stages(config: NhrConfig) -> list[Stage]:
    rounds = config.schedule.seeds_per_pair
    stages: list[Stage] = []
    for r in range(1, rounds + 1):
        names = {stage: round_name(stage, r, rounds) for stage in ROUND_STAGES}
        # the round before's tables; none before the first round
        before = None
        if r > 1:
            before = {stage: round_name(stage, r - 1, rounds) for stage in ROUND_STAGES}
        previous = (before["schedule"], before["validate"]) if before else None
        stages.append(AdaptiveScheduleStage(names["schedule"], r, rounds, previous))
        # (stage, the table it runs on, that table's key): it sees only the rows new this round
        for inner, driver, key in (
            (EditStage(), "schedule", "job_id"),
            (PrefilterStage(), "edit", "candidate_id"),
            (ValidateStage(config), "edit", "candidate_id"),
        ):
            stages.append(RoundStage(inner, names, before, driver, key))
    return stages


class RoundStage:
    """One round of a shard stage under the adaptive schedule: runs the stage on the rows its
    driving table gained this round, and returns the round before's rows followed by its own."""

    global_scope = False

    def __init__(
        self,
        inner: Stage,
        names: dict[str, str],
        before: dict[str, str] | None,
        driver: str,
        key: str,
    ) -> None:
        self.inner = inner
        self.name = names[inner.name]
        self.roles = inner.roles
        self.names = names
        self.before = before
        self.driver = driver
        self.key = key
        reads = [names.get(read, read) for read in inner.reads]
        if before is not None:
            reads = [before[inner.name], before[driver], *reads]
        # the driving table last: the ray executor orders shards by the size of the last read
        reads.remove(names[driver])
        self.reads = tuple(dict.fromkeys(reads)) + (names[driver],)

    def run(self, ctx: Any, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        own = {read: inputs[self.names.get(read, read)] for read in self.inner.reads}
        if self.before is None:
            return self.inner.run(ctx, own)
        seen = {row[self.key] for row in inputs[self.before[self.driver]]}
        own[self.driver] = [row for row in own[self.driver] if row[self.key] not in seen]
        return inputs[self.before[self.inner.name]] + self.inner.run(ctx, own)


def fold_rounds(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """stats.json's per-stage entries with each `<stage>@r` summed into `<stage>`, which then
    counts the work of every round, the round entries kept under its `rounds`."""
    folded = []
    for entry in entries:
        if ROUND_MARK in entry["stage"]:
            continue
        parts = [e for e in entries if base_name(e["stage"]) == entry["stage"]]
        if len(parts) == 1:
            folded.append(entry)
            continue
        total = StageStats()
        loads: dict[str, int] = {}
        for part in parts:
            total.merge(StageStats.from_dict(part))
            for role, count in part.get("model_loads", {}).items():
                loads[role] = loads.get(role, 0) + count
        seconds = sum(part.get("wall_seconds", 0.0) for part in parts)
        folded.append(
            {
                **entry,
                **total.to_dict(),
                "wall_seconds": round(seconds, 3),
                "model_loads": dict(sorted(loads.items())),
                "rounds": parts,
            }
        )
    return folded


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
    "second_validator": "validate",
    "describer": "design",
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
    schedule = new.get("schedule") or {}
    rounds = schedule.get("seeds_per_pair", 1) if schedule.get("policy") == "adaptive" else 1
    changes = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if flat_old.get(key) == flat_new.get(key):
            continue
        stage = stage_of_setting(key, new if key in flat_new else old)
        if stage is not None:
            if stage in ROUND_STAGES:  # under adaptive: from its first round on
                stage = round_name(stage, 1, rounds)
            changes.append((stage, key, flat_old.get(key), flat_new.get(key)))
    return sorted(changes, key=lambda change: ALL_STAGE_NAMES.index(base_name(change[0])))
