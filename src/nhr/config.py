"""The typed run configuration: YAML in, validated pydantic model out.

Every section is strict (unknown keys are errors) so a typo never silently falls back to a
default. `ConfigError` carries a message that names the key path and what was expected; the
CLI prints it and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nhr import taxonomy
from nhr.backends.configs import (
    DiffusersBackendConfig,
    GeminiBackendConfig,
    OpenAIBackendConfig,
    TransformersBackendConfig,
)
from nhr.backends.sim.config import SimBackendConfig


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what and where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# One entry per backend family; pydantic picks the class from the `backend` key. New families
# add their config class to this union.
ModelConfig = Annotated[
    SimBackendConfig
    | DiffusersBackendConfig
    | TransformersBackendConfig
    | OpenAIBackendConfig
    | GeminiBackendConfig,
    Field(discriminator="backend"),
]


class RunSection(_Section):
    seed: int = Field(0, description="master seed; every id and model seed derives from it")
    prompts: int = Field(64, ge=1, description="number of text-to-image prompts to design")
    shard_size: int = Field(8, ge=1, description="prompts per shard (unit of work and resume)")
    run_dir: str | None = Field(None, description="run directory; --run-dir overrides it")
    request_cache: Literal["auto", "on", "off"] = Field(
        "auto",
        description="keep model answers in RUN/cache so a crash or a redo never pays twice; "
        "auto: for API backends (openai, gemini), where calls cost money",
    )


class BriefSection(_Section):
    topic: str = "everyday scenes, objects and places"
    styles: list[str] = Field(
        default_factory=lambda: ["photo", "flat illustration", "anime", "oil painting", "sketch"]
    )
    operations: list[str] | dict[str, int] = Field(
        default_factory=lambda: ["remove_object", "add_object", "change_color"],
        min_length=1,
        description="operation keys from nhr.taxonomy, or a mapping key -> weight; design "
        "batches cycle through them, an operation of weight w getting w batches per cycle",
    )

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, value: list[str] | dict[str, int]) -> list[str] | dict[str, int]:
        keys = list(value)
        unknown = [op for op in keys if op not in taxonomy.OPERATIONS]
        if unknown:
            raise ValueError(
                f"unknown operation(s) {unknown}; choose from: {', '.join(taxonomy.OPERATIONS)}"
            )
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("operations must not repeat (use a mapping to weight them)")
        if isinstance(value, dict) and any(w < 1 for w in value.values()):
            raise ValueError("operation weights must be whole numbers >= 1")
        return value

    def operation_cycle(self) -> list[str]:
        """The operation of design batch j is operation_cycle()[j % len(cycle)]."""
        if isinstance(self.operations, list):
            return list(self.operations)
        return [key for key, weight in self.operations.items() for _ in range(weight)]


class ModelsSection(_Section):
    designer: ModelConfig = Field(default_factory=SimBackendConfig)
    generator: ModelConfig = Field(default_factory=SimBackendConfig)
    gate: ModelConfig = Field(default_factory=SimBackendConfig)
    editor: ModelConfig = Field(default_factory=SimBackendConfig)
    prefilter: ModelConfig = Field(default_factory=SimBackendConfig)
    validator: ModelConfig = Field(default_factory=SimBackendConfig)
    inverter: ModelConfig = Field(default_factory=SimBackendConfig)


class RetrySection(_Section):
    max_attempts: int = Field(4, ge=1, description="tries per item for retryable errors")
    backoff_s: float = Field(1.0, ge=0, description="first backoff; doubles each retry")
    max_backoff_s: float = Field(60.0, ge=0)
    unparseable_attempts: int = Field(
        3, ge=1, description="tries per item when the model answer cannot be parsed"
    )


class DesignSection(_Section):
    batch_size: int = Field(50, ge=1, description="items requested per LLM call (B)")
    temperature: float = Field(1.0, ge=0)
    max_batches: int | None = Field(
        None, ge=1, description="stop after this many calls even if short of prompts"
    )


# The 26 ~1 MP buckets of NHR-METHOD §6: W and H multiples of 64 between 640 and 1600
# (640x1600 ... 1600x640), non-square, area between 0.95 and 1.07 of 1024x1024. The published
# text gives only the count and the range; this is the rule that reproduces both.
def _default_buckets() -> list[tuple[int, int]]:
    target = 1024 * 1024
    sizes = range(640, 1601, 64)
    return [
        (w, h) for w in sizes for h in sizes if w != h and 0.95 * target <= w * h <= 1.07 * target
    ]


class GenerateSection(_Section):
    images_per_prompt: int = Field(10, ge=1, description="N source images (seeds) per prompt")
    buckets: list[tuple[int, int]] = Field(default_factory=_default_buckets)
    batch_size: int = Field(4, ge=1)

    @field_validator("buckets")
    @classmethod
    def _valid_buckets(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if not value:
            raise ValueError("at least one (width, height) bucket is needed")
        for w, h in value:
            if w < 16 or h < 16:
                raise ValueError(f"bucket {w}x{h} is too small")
        return value


class PlausibilitySection(_Section):
    enabled: bool = True
    batch_size: int = Field(8, ge=1)


class BudgetSection(_Section):
    """How many edit jobs to run. Unset = every job. The budget, not N and M, fixes the yield."""

    edits: int | None = Field(None, ge=1, description="maximum number of edit jobs")
    cost: float | None = Field(None, gt=0, description="maximum estimated cost of edit jobs")
    cost_per_edit: float = Field(1.0, ge=0, description="estimated cost of one edit job")
    cost_per_megapixel: float = Field(
        0.0, ge=0, description="added cost per megapixel of the source image"
    )


class ScheduleSection(_Section):
    seeds_per_pair: int = Field(5, ge=1, description="M editor seeds per (source, instruction)")
    budget: BudgetSection = Field(default_factory=BudgetSection)


class EditSection(_Section):
    batch_size: int = Field(4, ge=1)


class LowLevelCheck(_Section):
    """NHR-METHOD §3: connected components of the changed-pixel mask."""

    enabled: bool = True
    diff_threshold: int = Field(40, ge=0, le=255, description="per-pixel change counted above this")
    min_component_share: float = Field(
        0.005, ge=0, le=1, description="largest component must hold this share of changed pixels"
    )
    noop_threshold: int = Field(
        12,
        ge=0,
        le=255,
        description="per-pixel change at or below this is re-encoding noise (VAE round trip)",
    )
    min_changed_share: float = Field(
        0.001,
        ge=0,
        le=1,
        description="below this share of pixels changed beyond noop_threshold, a no-op",
    )
    skip_operations: list[str] | None = Field(
        None, description="operations exempt from the component rule; default: all global ones"
    )


class PrefilterSection(_Section):
    score: bool = Field(True, description="a) VLM adherence/aesthetics scores")
    min_adherence: float = Field(3.5, ge=1, le=5)
    min_aesthetics: float = Field(3.5, ge=1, le=5)
    unwanted_changes: bool = Field(True, description="b) VLM yes/no: no changes beyond the edit")
    aesthetics: bool = Field(True, description="c) VLM yes/no: the result is pleasing")
    low_level: LowLevelCheck = Field(default_factory=LowLevelCheck)
    batch_size: int = Field(8, ge=1)


class ValidateSection(_Section):
    adherence_threshold: float = Field(4.7, ge=1, le=5)
    aesthetics_threshold: float = Field(4.7, ge=1, le=5)
    batch_size: int = Field(8, ge=1)


class InvertSection(_Section):
    """Stage 9: an LLM writes the inverse instruction of every forward triplet."""

    enabled: bool = True
    max_words: int = Field(
        40, ge=3, description="longer answers are not one instruction and are re-asked"
    )
    batch_size: int = Field(8, ge=1)


class BackwardSection(_Section):
    """Stage 10: the validator scores each inverse; a failure drops it AND its forward."""

    enabled: bool = True
    adherence_threshold: float | None = Field(
        None, ge=1, le=5, description="default: validate.adherence_threshold"
    )
    aesthetics_threshold: float | None = Field(
        None, ge=1, le=5, description="default: validate.aesthetics_threshold"
    )
    inverse_attempts: int = Field(
        2,
        ge=1,
        description="wordings of an inverse tried before the pair is judged inconsistent",
    )
    batch_size: int = Field(8, ge=1)


class ComposeSection(_Section):
    """Stage 11: <edit 1, inverse(instr 1) + " and " + instr 2, edit 2> per pair of edits."""

    enabled: bool = True
    both_directions: bool = Field(True, description="make (1, 2) and (2, 1), not only i < j")
    max_per_source: int | None = Field(
        4, ge=1, description="composites kept per source image (a random, seeded subset)"
    )
    revalidate: bool = Field(True, description="score composites with the validator")
    tries_per_pair: int = Field(
        3,
        ge=1,
        description="with revalidate: combinations of accepted candidate images tried per pair",
    )
    batch_size: int = Field(8, ge=1)


AUGMENT_STEPS = ("invert", "backward", "compose")


class AugmentSection(_Section):
    order: list[str] = Field(
        default_factory=lambda: list(AUGMENT_STEPS),
        description="order of invert, backward (consistency filter) and compose",
    )

    @field_validator("order")
    @classmethod
    def _valid_order(cls, value: list[str]) -> list[str]:
        if sorted(value) != sorted(AUGMENT_STEPS):
            raise ValueError(f"must list each of {', '.join(AUGMENT_STEPS)} once")
        if value[0] != "invert":
            raise ValueError("invert must come first: the filter and compose need inverses")
        return value


class ExportSection(_Section):
    rows_per_file: int = Field(
        500, ge=1, description="triplets per parquet file (about 1.5 GB at 1 MP)"
    )


class NhrConfig(_Section):
    run: RunSection = Field(default_factory=RunSection)
    brief: BriefSection = Field(default_factory=BriefSection)
    models: ModelsSection = Field(default_factory=ModelsSection)
    retry: RetrySection = Field(default_factory=RetrySection)
    design: DesignSection = Field(default_factory=DesignSection)
    generate: GenerateSection = Field(default_factory=GenerateSection)
    plausibility: PlausibilitySection = Field(default_factory=PlausibilitySection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    edit: EditSection = Field(default_factory=EditSection)
    prefilter: PrefilterSection = Field(default_factory=PrefilterSection)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    augment: AugmentSection = Field(default_factory=AugmentSection)
    invert: InvertSection = Field(default_factory=InvertSection)
    backward: BackwardSection = Field(default_factory=BackwardSection)
    compose: ComposeSection = Field(default_factory=ComposeSection)
    export: ExportSection = Field(default_factory=ExportSection)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _sim_designer_supports_operations(self) -> NhrConfig:
        if self.models.designer.backend == "sim":
            from nhr.backends.sim import SUPPORTED_OPERATIONS

            missing = [op for op in list(self.brief.operations) if op not in SUPPORTED_OPERATIONS]
            if missing:
                raise ValueError(
                    f"brief.operations {missing} cannot be mined with the simulator; it supports: "
                    f"{', '.join(SUPPORTED_OPERATIONS)}"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what `RUN/config.yaml` holds)."""
        return self.model_dump(mode="json", by_alias=True)


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/quickstart.yaml)"
        elif "input" in item and item["type"] not in ("missing",):
            shown = repr(item["input"])
            if len(shown) > 60:
                shown = shown[:57] + "..."
            message = f"{message} (got {shown})"
        lines.append(f"  {path}: {message}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(data: Any) -> NhrConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid config: the top level must be a mapping, got {type(data).__name__}"
        )
    try:
        return NhrConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> NhrConfig:
    """Read a YAML config; `overrides` maps dotted key paths to values (from the CLI)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {path}: the top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot override {dotted}: {key} is not a mapping")
        node[leaf] = value
    return parse_config(data)
