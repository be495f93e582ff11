"""The typed run configuration: YAML in, validated pydantic model out.

Every section is strict (unknown keys are errors, and values must have their type: "12" is
not a number, "yes" not a boolean) so a typo never silently falls back to a default. Every model
role must be given (`models: sim` for an all-simulator run). `ConfigError` carries a message
that names the key path and what was expected; the CLI prints it and exits with status 2.

Every field says what it changes (`affects(stage)`, `affects_role()` or `operational()`, from
nhr.backends.configs): nhr.pipeline.config_changes refuses to resume a run whose config differs
in a setting that changes rows already mined.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nhr import taxonomy
from nhr.backends.configs import (
    OPERATIONAL,
    DiffusersBackendConfig,
    GeminiBackendConfig,
    OpenAIBackendConfig,
    TransformersBackendConfig,
    affects,
    affects_role,
    effect_of,
    operational,
)
from nhr.backends.sim.config import SimBackendConfig


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what and where."""


class _Section(BaseModel):
    # strict: YAML already types its values, so "12" for a number or "yes" for a boolean is a
    # mistake to report, not to coerce (an int where a float is expected is still fine)
    model_config = ConfigDict(extra="forbid", strict=True)


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
    seed: int = Field(
        0,
        description="master seed; every id and model seed derives from it",
        json_schema_extra=affects("design"),
    )
    prompts: int = Field(
        64,
        ge=1,
        description="number of text-to-image prompts to design",
        json_schema_extra=affects("design"),
    )
    shard_size: int = Field(
        8,
        ge=1,
        description="prompts per shard (unit of work and resume)",
        json_schema_extra=affects("design"),
    )
    run_dir: str | None = Field(
        None,
        description="run directory; --run-dir overrides it",
        json_schema_extra=operational(),
    )
    request_cache: Literal["auto", "on", "off"] = Field(
        "auto",
        description="keep model answers in RUN/cache so a crash or a redo never pays twice; "
        "auto: for API backends (openai, gemini), where calls cost money",
        json_schema_extra=operational(),  # a cached answer is the answer the call gave
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description="who runs the stages: local (this process) or ray (actor pools per model "
        "role on a Ray cluster; --ray-address or RAY_ADDRESS picks it); --executor overrides",
        json_schema_extra=operational(),  # both executors mine the same rows
    )


class BriefSection(_Section):
    topic: str = Field("everyday scenes, objects and places", json_schema_extra=affects("design"))
    styles: list[str] = Field(
        default_factory=lambda: ["photo", "flat illustration", "anime", "oil painting", "sketch"],
        json_schema_extra=affects("design"),
    )
    operations: list[str] | dict[str, int] = Field(
        default_factory=lambda: ["remove_object", "add_object", "change_color"],
        min_length=1,
        description="operation keys from nhr.taxonomy, or a mapping key -> weight; design "
        "batches cycle through them, an operation of weight w getting w batches per cycle",
        json_schema_extra=affects("design"),
    )
    target_mix: dict[str, float] | None = Field(
        None,
        description="share of released triplets per operation (brief.operations keys, shares "
        "summing to 1; an operation left out gets no pairs); needs schedule.policy: adaptive "
        "and a schedule.budget",
        json_schema_extra=affects("schedule"),
    )

    @model_validator(mode="after")
    def _target_mix_shares(self) -> BriefSection:
        if self.target_mix is None:
            return self
        unknown = [op for op in self.target_mix if op not in self.operations]
        if unknown:
            raise ValueError(
                f"target_mix names {unknown}, which are not in brief.operations "
                f"({', '.join(self.operations)})"
            )
        if any(not math.isfinite(v) or v < 0 for v in self.target_mix.values()):
            raise ValueError("target_mix shares must be numbers >= 0")
        total = sum(self.target_mix.values())
        if abs(total - 1) > 1e-6:
            raise ValueError(f"target_mix shares must sum to 1 (they sum to {total:g})")
        return self

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
    """One model per role, no defaults: a real config that forgot a role must not mine it with
    the simulator. `models: sim` is the shorthand for the simulator in every role. What a
    role's settings change is written in its backend family's config class."""

    designer: ModelConfig
    # required unless the sources are photos (sources.kind: images), which never call it
    generator: ModelConfig | None = Field(None, json_schema_extra=affects_role())
    gate: ModelConfig
    editor: ModelConfig
    prefilter: ModelConfig
    validator: ModelConfig
    inverter: ModelConfig
    # Optional roles: null unless a setting uses them (then a config error names the role).
    second_validator: ModelConfig | None = Field(
        None,
        description="the second judge of validate.second_judge; null when it is off. On "
        "--executor ray it loads in the validator's actors (the validate stage's pool)",
        json_schema_extra=affects_role(),
    )
    describer: ModelConfig | None = Field(
        None,
        description="a vision model that describes each source photo for the designer, "
        "inverter and gate (sources.kind: images); null otherwise",
        json_schema_extra=affects_role(),
    )


ROLES: tuple[str, ...] = tuple(ModelsSection.model_fields)
# The roles `models: sim` fills in (the generator too: only a photo run may leave it out); an
# optional role is filled only when a setting uses it.
REQUIRED_ROLES: tuple[str, ...] = tuple(
    name
    for name, field in ModelsSection.model_fields.items()
    if field.is_required() or name == "generator"
)
ALL_SIM = "sim"  # `models: sim`


class RetrySection(_Section):
    """Retrying one item in `call_model`. Operational: a retry resends the same deterministic
    request (the n-th re-ask of an unparseable answer is always the same request), so more or
    fewer tries only decide whether an item ends with the answer that request gives or as a
    failure; an answer already written never changes. On a resume, rows that already failed
    stay failed unless their stage is redone (`--redo-from`)."""

    max_attempts: int = Field(
        4,
        ge=1,
        description="tries per item for retryable errors of backends that do not retry "
        "themselves (sim, diffusers, transformers) and raised exceptions; API backends use "
        "models.<role>.limits.max_retries",
        json_schema_extra=operational(),
    )
    backoff_s: float = Field(
        1.0,
        ge=0,
        description="first backoff; doubles each retry",
        json_schema_extra=operational(),
    )
    max_backoff_s: float = Field(60.0, ge=0, json_schema_extra=operational())
    unparseable_attempts: int = Field(
        3,
        ge=1,
        description="tries per item when the model answer cannot be parsed",
        json_schema_extra=operational(),
    )
    stop_after_failures: int = Field(
        20,
        ge=0,
        description="stop the run when the first this many items a stage sends to a model all "
        "fail for the same reason (a broken backend); 0: never stop",
        json_schema_extra=operational(),
    )


class DesignSection(_Section):
    """B is written into the design prompt ("write B items"), so unlike every other stage's
    batch size it changes the prompts."""

    batch_size: int = Field(
        50,
        ge=1,
        description="items requested per LLM call (B)",
        json_schema_extra=affects("design"),
    )
    temperature: float = Field(1.0, ge=0, json_schema_extra=affects("design"))
    max_batches: int | None = Field(
        None,
        ge=1,
        description="stop after this many calls even if short of prompts",
        json_schema_extra=affects("design"),
    )


# The 26 ~1 MP buckets of docs/method.md §6: W and H multiples of 64 between 640 and 1600
# (640x1600 ... 1600x640), non-square, area between 0.95 and 1.07 of 1024x1024. The published
# text gives only the count and the range; this is the rule that reproduces both.
def _default_buckets() -> list[tuple[int, int]]:
    target = 1024 * 1024
    sizes = range(640, 1601, 64)
    return [
        (w, h) for w in sizes for h in sizes if w != h and 0.95 * target <= w * h <= 1.07 * target
    ]


# Batch sizes of every stage but design are operational: each backend answers a row from its
# own request and seed whatever its batch mates (diffusers: one generator per row;
# transformers: one sampler per row; APIs and the simulator: one request per row), and
# call_model retries item by item. (Batched GPU kernels may differ in the last bits.)
def _batch_size(default: int) -> Any:
    return Field(
        default, ge=1, description="items per backend call", json_schema_extra=operational()
    )


class GenerateSection(_Section):
    images_per_prompt: int = Field(
        10,
        ge=1,
        description="N source images (seeds) per prompt",
        json_schema_extra=affects("generate"),
    )
    buckets: list[tuple[int, int]] = Field(
        default_factory=_default_buckets, json_schema_extra=affects("generate")
    )
    batch_size: int = _batch_size(4)

    @field_validator("buckets", mode="before")
    @classmethod
    def _buckets_from_lists(cls, value: Any) -> Any:
        """YAML (and RUN/config.yaml) writes a bucket as a list [w, h]; strict mode wants the
        tuple the field is typed as."""
        if isinstance(value, list):
            return [tuple(item) if isinstance(item, list) else item for item in value]
        return value

    @field_validator("buckets")
    @classmethod
    def _valid_buckets(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if not value:
            raise ValueError("at least one (width, height) bucket is needed")
        for w, h in value:
            if w < 16 or h < 16:
                raise ValueError(f"bucket {w}x{h} is too small")
        return value


class SourcesSection(_Section):
    """Where the source images come from (README "Mining from your own photos"): a generator
    drawing the designed prompts (generate), or the user's photos (images), which a describer
    describes and the designer writes edits for (nhr/sources.py, nhr/stages/photo_design.py)."""

    kind: Literal["generate", "images"] = Field(
        "generate",
        description="generate: text-to-image from designed prompts; images: the photos at "
        "sources.path",
        json_schema_extra=affects("design"),
    )
    path: str | None = Field(
        None,
        description="images: a folder of image files, an imagefolder (metadata.jsonl), a "
        "Parquet file or folder, or a Hugging Face dataset id (ID or ID:SPLIT)",
        json_schema_extra=affects("design"),
    )
    column: str = Field(
        "image",
        description="images: the column holding the image in a dataset (an imagefolder "
        "without it uses file_name)",
        json_schema_extra=affects("design"),
    )
    license_column: str = Field(
        "license",
        description="images: the dataset column carried into the export as each source's "
        "licence, when the dataset has it",
        json_schema_extra=affects("design"),
    )
    sample: int | None = Field(
        None,
        ge=1,
        description="images: draw this many items (seeded by run.seed); unset: all of them",
        json_schema_extra=affects("design"),
    )
    min_side: int = Field(
        512,
        ge=16,
        description="images: a photo whose shorter side is below this is rejected (too_small)",
        json_schema_extra=affects("design"),
    )
    max_pixels: int = Field(
        40_000_000,
        ge=1,
        description="images: a photo with more pixels is rejected unread (oversized_image: a "
        "decompression bomb)",
        json_schema_extra=affects("design"),
    )
    edits_per_photo: int = Field(
        6,
        ge=1,
        description="images: edits the designer writes per photo at most, spread over the "
        "brief's operations that fit it",
        json_schema_extra=affects("design"),
    )
    batch_size: int = _batch_size(8)  # describer requests per backend call

    @model_validator(mode="after")
    def _path_for_images(self) -> SourcesSection:
        if self.kind == "images" and not (self.path or "").strip():
            raise ValueError("kind: images needs a path (a folder, a Parquet file or a dataset id)")
        if self.kind == "generate" and (self.path is not None or self.sample is not None):
            raise ValueError("path and sample are read only with kind: images")
        return self


class PlausibilitySection(_Section):
    enabled: bool = Field(True, json_schema_extra=affects("plausibility"))
    # A quality lever (README "Quality levers"): look at each source more than once, so fewer
    # defective sources reach the (expensive) editor.
    samples: int = Field(
        1,
        ge=1,
        le=16,
        description="K: the gate is asked K times per source, sampled (temperature "
        "sample_temperature, seed = sample index 0..K-1); 1: one greedy request (temperature "
        "0), as before",
        json_schema_extra=affects("plausibility"),
    )
    reject: Literal["any_no", "majority_no"] = Field(
        "any_no",
        description="with samples > 1, when a source fails: any_no (one clear no is enough: "
        "a defect seen once is a defect) or majority_no (more than half say no)",
        json_schema_extra=affects("plausibility"),
    )
    sample_temperature: float = Field(
        1.0,
        gt=0,
        description="temperature of each sampled request (samples > 1)",
        json_schema_extra=affects("plausibility"),
    )
    batch_size: int = _batch_size(8)


class BudgetSection(_Section):
    """How many edit jobs to run. Unset = every job. The budget, not N and M, fixes the yield."""

    edits: int | None = Field(
        None,
        ge=1,
        description="maximum number of edit jobs",
        json_schema_extra=affects("schedule"),
    )
    cost: float | None = Field(
        None,
        gt=0,
        description="maximum estimated cost of edit jobs",
        json_schema_extra=affects("schedule"),
    )
    cost_per_edit: float = Field(
        1.0,
        ge=0,
        description="estimated cost of one edit job",
        json_schema_extra=affects("schedule"),
    )
    cost_per_megapixel: float = Field(
        0.0,
        ge=0,
        description="added cost per megapixel of the source image",
        json_schema_extra=affects("schedule"),
    )


class ScheduleSection(_Section):
    seeds_per_pair: int = Field(
        5,
        ge=1,
        description="M editor seeds per (source, instruction)",
        json_schema_extra=affects("schedule"),
    )
    budget: BudgetSection = Field(default_factory=BudgetSection)
    policy: Literal["uniform", "adaptive"] = Field(
        "uniform",
        description="uniform: M seeds for every pair, drawn at once; adaptive: rounds of one "
        "seed each, a pair leaving once it has a passing candidate (README 'Adaptive "
        "scheduling')",
        json_schema_extra=affects("schedule"),
    )
    margin: float = Field(
        0.0,
        ge=0,
        description="adaptive: a pair whose best passing candidate is less than this above "
        "both validate thresholds gets another round (0: stop at the first pass)",
        json_schema_extra=affects("schedule"),
    )

    min_yield: float = Field(
        0.0,
        ge=0,
        le=1,
        description="adaptive: an operation's open pairs get another seed only while its "
        "pass rate at the seed before (passes per editor call, measured in this run) is at "
        "least this (0: every open pair goes on, up to seeds_per_pair)",
        json_schema_extra=affects("schedule"),
    )

    @model_validator(mode="after")
    def _rounds_only(self) -> ScheduleSection:
        for key in ("margin", "min_yield"):
            if getattr(self, key) and self.policy != "adaptive":
                raise ValueError(f"{key} only applies to policy: adaptive (uniform has no rounds)")
        return self


class EditSection(_Section):
    batch_size: int = _batch_size(4)


class LowLevelCheck(_Section):
    """docs/method.md §3: connected components of the changed-pixel mask."""

    enabled: bool = Field(True, json_schema_extra=affects("prefilter"))
    diff_threshold: int = Field(
        40,
        ge=0,
        le=255,
        description="per-pixel change counted above this",
        json_schema_extra=affects("prefilter"),
    )
    min_component_share: float = Field(
        0.005,
        ge=0,
        le=1,
        description="largest component must hold this share of changed pixels",
        json_schema_extra=affects("prefilter"),
    )
    noop_threshold: int = Field(
        12,
        ge=0,
        le=255,
        description="per-pixel change at or below this is re-encoding noise (VAE round trip)",
        json_schema_extra=affects("prefilter"),
    )
    min_changed_share: float = Field(
        0.001,
        ge=0,
        le=1,
        description="below this share of pixels changed beyond noop_threshold, a no-op",
        json_schema_extra=affects("prefilter"),
    )
    skip_operations: list[str] | None = Field(
        None,
        description="operations exempt from the component rule; default: all global ones",
        json_schema_extra=affects("prefilter"),
    )


class PrefilterSection(_Section):
    score: bool = Field(
        True,
        description="a) VLM adherence/aesthetics scores",
        json_schema_extra=affects("prefilter"),
    )
    min_adherence: float = Field(3.5, ge=1, le=5, json_schema_extra=affects("prefilter"))
    min_aesthetics: float = Field(3.5, ge=1, le=5, json_schema_extra=affects("prefilter"))
    unwanted_changes: bool = Field(
        True,
        description="b) VLM yes/no: no changes beyond the edit",
        json_schema_extra=affects("prefilter"),
    )
    aesthetics: bool = Field(
        True,
        description="c) VLM yes/no: the result is pleasing",
        json_schema_extra=affects("prefilter"),
    )
    low_level: LowLevelCheck = Field(default_factory=LowLevelCheck)
    batch_size: int = _batch_size(8)


class CategoryThresholds(_Section):
    """The keep-rule of one category (`validate.thresholds.<operation>`): its own threshold
    pair, or `exclude: true` (the judge cannot reach the target precision on it at any
    threshold, so none of its candidates is released; each is dropped `category_excluded`)."""

    adherence: float | None = Field(None, json_schema_extra=affects("validate"))
    aesthetics: float | None = Field(None, json_schema_extra=affects("validate"))
    exclude: bool = Field(
        False,
        description="drop every candidate of this category (reason category_excluded); "
        "`nhr calibrate --exclude-unreachable` writes it for categories that cannot reach the "
        "target precision",
        json_schema_extra=affects("validate"),
    )


class JudgeOutput(_Section):
    """How the validator is asked and how its answer is read: the prompt, the parser and the
    scale its scores are on (the thresholds are on that scale). The default is the paper's
    prompt, {"InstructionAdherence", "ImageAesthetic"} on 1-5. Used by validate, backward and
    the compose re-validation alike."""

    prompt: str = Field(
        "score",
        description="a prompt template of nhr by name (score), or the prompt text itself "
        "with $instruction where the instruction goes",
        json_schema_extra=affects("validate"),
    )
    parser: Literal["scores", "viescore"] = Field(
        "scores",
        description="scores: {InstructionAdherence, ImageAesthetic}; viescore: "
        '{"score": [success, overediting, naturalness, artifacts]} read as adherence = '
        "min(success, overediting), aesthetics = min(naturalness, artifacts)",
        json_schema_extra=affects("validate"),
    )
    low: float | None = Field(
        1.0, description="lowest score (null: unbounded)", json_schema_extra=affects("validate")
    )
    high: float | None = Field(
        5.0, description="highest score (null: unbounded)", json_schema_extra=affects("validate")
    )
    max_tokens: int = Field(
        64,
        ge=1,
        description="answer length (more for prompts that ask for reasoning)",
        json_schema_extra=affects("validate"),
    )

    @model_validator(mode="after")
    def _ordered(self) -> JudgeOutput:
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ValidateSection(_Section):
    # on the judge's scale (validate.judge; 1-5 by default)
    adherence_threshold: float = Field(4.7, json_schema_extra=affects("validate"))
    aesthetics_threshold: float = Field(4.7, json_schema_extra=affects("validate"))
    thresholds: dict[str, CategoryThresholds] = Field(
        default_factory=dict,
        description="per operation (brief.operations keys): its own threshold pair; other "
        "operations and composites use the global pair. `nhr calibrate --target-precision` "
        "writes this mapping",
        json_schema_extra=affects("validate"),
    )
    judge: JudgeOutput = Field(default_factory=JudgeOutput)
    # Quality levers (README "Quality levers"): ask more than once, ask a second judge.
    samples: int = Field(
        1,
        ge=1,
        le=64,
        description="K: the validator is asked K times per candidate, sampled (temperature "
        "sample_temperature, seed = sample index 0..K-1), and its scores aggregated; 1: one "
        "greedy request (temperature 0), as before",
        json_schema_extra=affects("validate"),
    )
    aggregate: Literal["mean", "min"] = Field(
        "mean",
        description="how K samples become the stored adherence and aesthetics: mean, or min "
        "(every sample must pass); with samples: 1 both are the one answer",
        json_schema_extra=affects("validate"),
    )
    sample_temperature: float = Field(
        1.0,
        gt=0,
        description="temperature of each sampled request (samples > 1)",
        json_schema_extra=affects("validate"),
    )
    second_judge: bool = Field(
        False,
        description="a candidate the validator passes must also pass the same thresholds with "
        "models.second_validator (an independent judge, asked like the validator, with the "
        "same samples); its scores are kept as second_adherence / second_aesthetics",
        json_schema_extra=affects("validate"),
    )
    second_judge_rule: Literal["both_pass", "mean"] = Field(
        "both_pass",
        description="with second_judge, how the two judges decide: both_pass (the second judge "
        "is asked about the candidates the validator passes, and must pass them too) or mean "
        "(both judges score every candidate; the mean of their scores must pass, and is what "
        "adherence / aesthetics hold and best-of ranks by)",
        json_schema_extra=affects("validate"),
    )
    batch_size: int = _batch_size(8)

    @model_validator(mode="after")
    def _thresholds_on_scale(self) -> ValidateSection:
        pairs = {"": (self.adherence_threshold, self.aesthetics_threshold)}
        for operation, pair in self.thresholds.items():
            given = [v for v in (pair.adherence, pair.aesthetics) if v is not None]
            if pair.exclude:
                if given:
                    raise ValueError(
                        f"validate.thresholds.{operation}: exclude: true takes no adherence or "
                        "aesthetics threshold (an excluded category keeps nothing)"
                    )
                continue
            if len(given) < 2:
                raise ValueError(
                    f"validate.thresholds.{operation}: give both adherence and aesthetics, or "
                    "exclude: true"
                )
            pairs[f"thresholds.{operation}."] = (pair.adherence, pair.aesthetics)
        low, high = self.judge.low, self.judge.high
        for prefix, values in pairs.items():
            for name, value in zip(("adherence", "aesthetics"), values):
                if (low is not None and value < low) or (high is not None and value > high):
                    key = f"{prefix}{name}" if prefix else f"{name}_threshold"
                    raise ValueError(
                        f"validate.{key} {value} is outside the judge's scale "
                        f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
                    )
        unknown = [key for key in self.thresholds if key not in taxonomy.OPERATIONS]
        if unknown:
            raise ValueError(
                f"thresholds for unknown operation(s) {', '.join(unknown)}; use operation keys "
                "such as remove_object"
            )
        return self

    @model_validator(mode="after")
    def _rule_needs_second_judge(self) -> ValidateSection:
        if self.second_judge_rule != "both_pass" and not self.second_judge:
            raise ValueError(
                f"validate.second_judge_rule: {self.second_judge_rule} needs validate."
                "second_judge: true (and models.second_validator)"
            )
        return self

    def pair(self, operation: str | None) -> tuple[float, float]:
        """The (adherence, aesthetics) thresholds for an operation: its own, else the global;
        (inf, inf) for an excluded operation (nothing reaches it)."""
        own = self.thresholds.get(operation) if operation else None
        if own is not None:
            if own.exclude:
                return math.inf, math.inf
            return own.adherence, own.aesthetics
        return self.adherence_threshold, self.aesthetics_threshold

    def excluded(self, operation: str | None) -> bool:
        """Whether the operation is excluded (`validate.thresholds.<op>.exclude`)."""
        own = self.thresholds.get(operation) if operation else None
        return own is not None and own.exclude


class SelectSection(_Section):
    """Stage 8: which of a pair's passing candidates becomes its forward triplet."""

    best_of: Literal["pointwise", "pairwise"] = Field(
        "pointwise",
        description="pointwise: the highest geometric mean of the validator's scores; "
        "pairwise: the validator compares every two passing candidates side by side, in both "
        "orders (cancelling a position bias), and the one with the most wins is kept (ties: "
        "geometric mean, then id); a group whose comparisons fail falls back to pointwise",
        json_schema_extra=affects("select"),
    )
    max_tokens: int = Field(
        64,
        ge=1,
        description="answer length of a pairwise comparison",
        json_schema_extra=affects("select"),
    )
    batch_size: int = _batch_size(8)


class InvertSection(_Section):
    """Stage 9: an LLM writes the inverse instruction of every forward triplet."""

    enabled: bool = Field(True, json_schema_extra=affects("invert"))
    max_words: int = Field(
        40,
        ge=3,
        description="longer answers are not one instruction and are re-asked",
        json_schema_extra=affects("invert"),
    )
    batch_size: int = _batch_size(8)


class BackwardSection(_Section):
    """Stage 10: the validator scores each inverse; a failure drops it AND its forward."""

    # on/off re-chains the stages after invert (a disabled stage is not in the run's stage
    # list, so the change is reported against invert, which always precedes it)
    enabled: bool = Field(True, json_schema_extra=affects("invert"))
    adherence_threshold: float | None = Field(
        None,
        ge=1,
        le=5,
        description="default: validate.adherence_threshold",
        json_schema_extra=affects("backward"),
    )
    aesthetics_threshold: float | None = Field(
        None,
        ge=1,
        le=5,
        description="default: validate.aesthetics_threshold",
        json_schema_extra=affects("backward"),
    )
    inverse_attempts: int = Field(
        2,
        ge=1,
        description="wordings of an inverse tried before the pair is judged inconsistent",
        json_schema_extra=affects("backward"),
    )
    batch_size: int = _batch_size(8)


class ComposeSection(_Section):
    """Stage 11: <edit 1, inverse(instr 1) + " and " + instr 2, edit 2> per pair of edits."""

    enabled: bool = Field(True, json_schema_extra=affects("invert"))  # see backward.enabled
    both_directions: bool = Field(
        True,
        description="make (1, 2) and (2, 1), not only i < j",
        json_schema_extra=affects("compose"),
    )
    max_per_source: int | None = Field(
        4,
        ge=1,
        description="composites kept per source image (a random, seeded subset)",
        json_schema_extra=affects("compose"),
    )
    revalidate: bool = Field(
        True,
        description="score composites with the validator",
        json_schema_extra=affects("compose"),
    )
    tries_per_pair: int = Field(
        3,
        ge=1,
        description="with revalidate: combinations of accepted candidate images tried per pair",
        json_schema_extra=affects("compose"),
    )
    batch_size: int = _batch_size(8)


AUGMENT_STEPS = ("invert", "backward", "compose")


class AugmentSection(_Section):
    order: list[str] = Field(
        default_factory=lambda: list(AUGMENT_STEPS),
        description="order of invert, backward (consistency filter) and compose",
        json_schema_extra=affects("invert"),
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
        500,
        ge=1,
        description="triplets per parquet file (about 1.5 GB at 1 MP)",
        json_schema_extra=affects("export"),
    )
    license: str | None = Field(
        None,
        description="licence of the released dataset, as a Hugging Face licence id "
        "(apache-2.0, cc-by-4.0, other, ...), written into the dataset card's metadata; "
        "unset, the card says none was chosen",
        json_schema_extra=affects("export"),
    )
    license_name: str | None = Field(
        None,
        description="with license: other, the licence's short name (the card's license_name, "
        "which the Hub asks for), e.g. my-lab-research-licence",
        json_schema_extra=affects("export"),
    )
    license_link: str | None = Field(
        None,
        description="with license: other, where its text is (the card's license_link: a URL, "
        "or LICENSE for a file you add to the dataset repository)",
        json_schema_extra=affects("export"),
    )

    @field_validator("license")
    @classmethod
    def _licence_id(cls, value: str | None) -> str | None:
        # the Hub refuses a card whose licence id it does not know: refuse it here, before
        # a run is mined and pushed, rather than at `--push-to-hub`
        if value is not None and value not in HUB_LICENSES:
            close = difflib.get_close_matches(value.lower(), sorted(HUB_LICENSES), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"{value!r} is not a Hugging Face licence id{hint}; use one of the Hub's ids "
                "(apache-2.0, mit, cc-by-4.0, cc-by-nc-4.0, ...), or `other` with "
                "export.license_name and export.license_link"
            )
        return value

    @model_validator(mode="after")
    def _other_licence_is_named(self) -> ExportSection:
        if self.license == "other" and not self.license_name:
            raise ValueError(
                "export.license: other needs export.license_name (and export.license_link, "
                "where its text is): the Hub shows the name on the dataset page"
            )
        if self.license != "other" and (self.license_name or self.license_link):
            raise ValueError(
                "export.license_name and export.license_link go with export.license: other "
                f"(the licence {self.license!r} is known to the Hub by its id)"
            )
        return self


# The licence ids the Hugging Face Hub accepts in a card's `license` field (its documentation,
# "Licenses"); any other licence is `other` with a name and a link.
HUB_LICENSES = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m
    bigscience-bloom-rail-1.0 bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd
    bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
    cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0
    cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0
    cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0
    epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
    lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql
    ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1
    llama3.2 llama3.3 gemma unknown other
    """.split()
)


class NhrConfig(_Section):
    run: RunSection = Field(default_factory=RunSection)
    brief: BriefSection = Field(default_factory=BriefSection)
    models: ModelsSection  # no default: see ModelsSection
    retry: RetrySection = Field(default_factory=RetrySection)
    design: DesignSection = Field(default_factory=DesignSection)
    sources: SourcesSection = Field(default_factory=SourcesSection)
    generate: GenerateSection = Field(default_factory=GenerateSection)
    plausibility: PlausibilitySection = Field(default_factory=PlausibilitySection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    edit: EditSection = Field(default_factory=EditSection)
    prefilter: PrefilterSection = Field(default_factory=PrefilterSection)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    select: SelectSection = Field(default_factory=SelectSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    invert: InvertSection = Field(default_factory=InvertSection)
    backward: BackwardSection = Field(default_factory=BackwardSection)
    compose: ComposeSection = Field(default_factory=ComposeSection)
    export: ExportSection = Field(default_factory=ExportSection)

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    @field_validator("models", mode="before")
    @classmethod
    def _expand_all_sim(cls, value: Any) -> Any:
        """`models: sim` is every role on the simulator with its defaults; the resolved config
        (RUN/config.yaml) writes every role out."""
        if value == ALL_SIM:
            return {role: {"backend": "sim"} for role in REQUIRED_ROLES}
        if isinstance(value, str):
            raise ValueError(
                f"write one entry per role ({', '.join(ROLES)}), or `models: sim` for an "
                "all-simulator run"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _all_sim_optional_roles(cls, data: Any) -> Any:
        """`models: sim` with a setting that uses an optional role: that role is a simulator
        too. The second judge (validate.second_judge) under its own model name, so its own
        errors are its own, not the validator's; the describer when mining photos."""
        if not isinstance(data, dict) or data.get("models") != ALL_SIM:
            return data
        optional: dict[str, dict[str, str]] = {}
        validate = data.get("validate")
        if isinstance(validate, dict) and validate.get("second_judge") is True:
            optional["second_validator"] = {"backend": "sim", "model": "sim-second-judge"}
        sources = data.get("sources")
        if isinstance(sources, dict) and sources.get("kind") == "images":
            optional["describer"] = {"backend": "sim"}
        if not optional:
            return data
        models = {role: {"backend": "sim"} for role in REQUIRED_ROLES}
        return {**data, "models": {**models, **optional}}

    @model_validator(mode="after")
    def _optional_roles_given(self) -> NhrConfig:
        if self.validate_.second_judge and self.models.second_validator is None:
            raise ValueError(
                "validate.second_judge needs a second judge: add models.second_validator (a "
                "model config like models.validator, ideally another model), or set "
                "validate.second_judge: false"
            )
        return self

    @model_validator(mode="after")
    def _generator_for_generated_sources(self) -> NhrConfig:
        if self.sources.kind == "generate" and self.models.generator is None:
            raise ValueError(
                "models.generator is missing: a run that generates its source images needs a "
                "text-to-image model (or `models: sim`); only `sources.kind: images` runs "
                "without one"
            )
        return self

    @model_validator(mode="after")
    def _describer_for_photos(self) -> NhrConfig:
        if self.sources.kind == "images" and self.models.describer is None:
            raise ValueError(
                "sources.kind: images needs a describer: add models.describer (a vision model "
                "that describes each photo, e.g. the validator's model), or `models: sim`"
            )
        return self

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

    @model_validator(mode="after")
    def _target_mix_needs_adaptive_budget(self) -> NhrConfig:
        # without a budget every pair is edited, so the released mix is the pool's
        budget = self.schedule.budget
        if self.brief.target_mix is not None and (
            self.schedule.policy != "adaptive" or (budget.edits is None and budget.cost is None)
        ):
            raise ValueError(
                "brief.target_mix needs schedule.policy: adaptive and a schedule.budget "
                "(edits or cost): the scheduler steers the mix by which pairs it spends the "
                "budget on"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what `RUN/config.yaml` holds)."""
        return self.model_dump(mode="json", by_alias=True)


def setting_effect(key: str, data: dict[str, Any]) -> str | None:
    """What the setting at the dotted `key` of a resolved config `data` (`to_dict()` form)
    changes: a stage name, ROLE (a `models.<role>` setting: the stages using the role) or
    OPERATIONAL, as its field says. None when no config class has that key (a config written
    by another version of nhr). Keys inside a list or mapping setting (`brief.operations.x`)
    belong to that setting."""
    section: type[BaseModel] = NhrConfig
    value: Any = data
    for name in key.split("."):
        field = next((f for n, f in section.model_fields.items() if (f.alias or n) == name), None)
        if field is None:
            return None
        value = value.get(name) if isinstance(value, dict) else None
        nested = _section_class(field.annotation, value)
        if nested is None:
            return effect_of(field)
        section = nested
    # The key names a whole section (`prices: null` against `prices: {...}`): it changes what
    # its first output-affecting field changes, if any.
    effects = [effect for _, effect in leaf_effects(section)]
    return next((e for e in effects if e != OPERATIONAL), OPERATIONAL)


def _section_class(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The config class of a field holding a section, or None for a leaf. A union of sections
    (a model role) picks its member by the `backend` key of the value."""
    members = _section_members(annotation)
    if len(members) <= 1:
        return members[0] if members else None  # a section, `Prices | None`, or a leaf
    backend = value.get("backend") if isinstance(value, dict) else None
    for member in members:
        if backend in typing.get_args(member.model_fields["backend"].annotation):
            return member
    return None


def _section_members(annotation: Any) -> list[type[BaseModel]]:
    """The config classes a field may hold: one section, the members of a union, or none."""
    if _is_section(annotation):
        return [annotation]
    if typing.get_origin(annotation) is Annotated:  # an optional role: Annotated[union] | None
        return _section_members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _section_members(a)]
    return []


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def leaf_effects(section: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    """(dotted key, effect) of every leaf of a config class; a union of sections (a model
    role) lists the leaves of every member. Sections held in a list (diffusers `loras`) are
    listed too, under `key[]`, though the list is compared as one value."""
    leaves: list[tuple[str, str | None]] = []
    for name, field in section.model_fields.items():
        key = prefix + (field.alias or name)
        members = _section_members(field.annotation)
        if members:
            for member in members:
                leaves += leaf_effects(member, key + ".")
            continue
        leaves.append((key, effect_of(field)))
        for arg in typing.get_args(field.annotation):  # list[LoraAdapter]
            if _is_section(arg):
                leaves += leaf_effects(arg, key + "[].")
    return leaves


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/quickstart.yaml)"
        elif item["type"] == "missing" and item["loc"][0] == "models" and len(item["loc"]) <= 2:
            message = (
                "missing; every role needs a model (write `models: sim` for an all-simulator run)"
            )
        elif "input" in item and item["type"] not in ("missing",) and item["loc"]:
            shown = repr(item["input"])
            if len(shown) > 60:
                shown = shown[:57] + "..."
            message = f"{message} (got {shown})"
        lines.append(f"  {path}: {message}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(data: Any) -> NhrConfig:
    if data is None:
        raise ConfigError("invalid config: it is empty (see configs/quickstart.yaml)")
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
    if data is None:  # an empty file, or only comments: not a run with every default
        raise ConfigError(
            f"config file {path} is empty; start from configs/quickstart.yaml "
            "(`models: sim` is the smallest config)"
        )
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
