"""Configuration of the simulator backend (one entry per model role in the run config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nhr.backends.configs import ModelScaling, affects_role, operational


class _Strict(BaseModel):
    # strict: "12" is not a number and "yes" is not a boolean (YAML already types its values)
    model_config = ConfigDict(extra="forbid", strict=True)


class SimFaults(_Strict):
    """Per-item fault injection; decisions are deterministic per (request, attempt).

    The four rates change the simulated model's answers, not only how it is reached: one draw
    decides among all of them (raising `exception` moves which items are refused), a refusal is
    permanent, and a malformed inverse is re-asked with a new seed, which gives another answer.
    Only `latency_s` is operational.
    """

    exception: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of items raising an exception",
        json_schema_extra=affects_role(),
    )
    timeout: float = Field(
        0.0, ge=0, le=1, description="share of items timing out", json_schema_extra=affects_role()
    )
    malformed: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of text answers that are garbage",
        json_schema_extra=affects_role(),
    )
    refusal: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of items refused (a permanent error, not retryable)",
        json_schema_extra=affects_role(),
    )
    latency_s: float = Field(
        0.0,
        ge=0,
        description="seconds of simulated latency per item",
        json_schema_extra=operational(),
    )


class SimEditorErrors(_Strict):
    """Probability of each failure mode per edit attempt; the rest (65 %) are correct edits.

    Calibrated with the default judges (pre-filter score_noise 1.2, validator 0.62) and the
    pipeline's default thresholds: about 57 % of attempts fail the pre-filter, 4 % of the rest
    the low-level check and 64 % of the rest the validator at T = 4.7, close to the reference
    run (-57 %, -3 %, -63 %; NHR-METHOD section 5).
    """

    noop: float = Field(
        0.06,
        ge=0,
        le=1,
        description="nothing changes but the round-trip noise",
        json_schema_extra=affects_role(),
    )
    wrong_target: float = Field(
        0.05,
        ge=0,
        le=1,
        description="the change lands on another object, or a wrong value",
        json_schema_extra=affects_role(),
    )
    extra_change: float = Field(
        0.08,
        ge=0,
        le=1,
        description="the right change plus an unrequested recolour",
        json_schema_extra=affects_role(),
    )
    artefact: float = Field(
        0.06,
        ge=0,
        le=1,
        description="the right change plus an ugly blob",
        json_schema_extra=affects_role(),
    )
    noise: float = Field(
        0.03,
        ge=0,
        le=1,
        description="isolated speckles everywhere (half the time without the edit)",
        json_schema_extra=affects_role(),
    )
    color_drift: float = Field(
        0.03,
        ge=0,
        le=1,
        description="the right change plus a global colour shift",
        json_schema_extra=affects_role(),
    )
    partial: float = Field(
        0.04,
        ge=0,
        le=1,
        description="half done: faded, half recoloured, or one clause dropped",
        json_schema_extra=affects_role(),
    )


class SimGeneratorErrors(_Strict):
    """Probability of each defect per generated source image, drawn independently.

    With the default judge (defect_detection 0.85, yes_no_flip 0.05) about 55 % of sources
    fail the plausibility gate (reference: 56 %); about 15 % of the sources that pass still
    carry a defect, and missing objects among them make the phantom removals that only the
    backward-consistency filter catches.
    """

    missing_object: float = Field(
        0.30,
        ge=0,
        le=1,
        description="one object of the prompt is not drawn",
        json_schema_extra=affects_role(),
    )
    duplicate_object: float = Field(
        0.12,
        ge=0,
        le=1,
        description="one object is drawn twice (a copy in a free slot)",
        json_schema_extra=affects_role(),
    )
    garbled_object: float = Field(
        0.22, ge=0, le=1, description="one object is scrambled", json_schema_extra=affects_role()
    )
    implausible: float = Field(
        0.20,
        ge=0,
        le=1,
        description="the world is drawn upside down",
        json_schema_extra=affects_role(),
    )


class SimInversionErrors(_Strict):
    """Probability of each kind of bad inverse instruction written by the simulated LLM."""

    vague: float = Field(
        0.05, ge=0, le=1, description='e.g. "Change it"', json_schema_extra=affects_role()
    )
    wrong: float = Field(
        0.03,
        ge=0,
        le=1,
        description="wrong object, colour, place or value",
        json_schema_extra=affects_role(),
    )
    banned_word: float = Field(
        0.04,
        ge=0,
        le=1,
        description="contains back / undo / restore / revert",
        json_schema_extra=affects_role(),
    )


class SimBackendConfig(ModelScaling):
    """One simulated model; the same class serves every role (designer, generator, judge...).

    Every setting changes the simulated answers except `faults.latency_s` (see SimFaults).
    """

    backend: Literal["sim"] = Field("sim", json_schema_extra=affects_role())
    model: str = Field("sim-v1", json_schema_extra=affects_role())
    scale: float = Field(
        0.125,
        gt=0,
        le=1,
        description="render size = requested size x scale (fast quickstart)",
        json_schema_extra=affects_role(),
    )
    score_noise: float = Field(
        0.62,
        ge=0,
        description="std-dev of the vision model's score noise; the mean absolute error "
        "against the true score is about 0.8 x this (0.62 -> 0.50 like the fine-tuned "
        "validator, 1.2 -> 0.96 like Qwen2.5-VL-72B)",
        json_schema_extra=affects_role(),
    )
    item_noise_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of the score-noise variance that is a stable property of the image "
        "pair (the judge's own opinion of it), shared by the forward and the inverse triplet; "
        "the rest is drawn per request. At 1.0 an inverse is judged as leniently or harshly as "
        "its forward, so the backward filter drops inverses for what they get wrong, not for "
        "re-rolled noise at the threshold (a share of 0.99 already makes ~10 % of correct "
        "forwards fail there, because selection leaves many readings exactly at 4.7)",
        json_schema_extra=affects_role(),
    )
    score_correlation: float = Field(
        0.7,
        ge=0,
        le=1,
        description="correlation of the adherence and aesthetics noise (halo)",
        json_schema_extra=affects_role(),
    )
    aesthetic_noise_ratio: float = Field(
        0.5,
        ge=0,
        description="std-dev of the aesthetics noise as a multiple of score_noise",
        json_schema_extra=affects_role(),
    )
    wrap_json: float = Field(
        0.2,
        ge=0,
        le=1,
        description="share of design answers wrapped in code fences or prose",
        json_schema_extra=affects_role(),
    )
    yes_no_flip: float = Field(
        0.05,
        ge=0,
        le=1,
        description="chance a yes/no answer is flipped",
        json_schema_extra=affects_role(),
    )
    defect_detection: float = Field(
        0.85,
        ge=0,
        le=1,
        description="chance the vision model notices a source defect",
        json_schema_extra=affects_role(),
    )
    # sections: their own fields say what they change
    editor_errors: SimEditorErrors = Field(default_factory=SimEditorErrors)
    generator_errors: SimGeneratorErrors = Field(default_factory=SimGeneratorErrors)
    inversion_errors: SimInversionErrors = Field(default_factory=SimInversionErrors)
    faults: SimFaults = Field(default_factory=SimFaults)
