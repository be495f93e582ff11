"""Configuration of the simulator backend (one entry per model role in the run config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimFaults(_Strict):
    """Per-item fault injection; decisions are deterministic per (request, attempt)."""

    exception: float = Field(0.0, ge=0, le=1, description="share of items raising an exception")
    timeout: float = Field(0.0, ge=0, le=1, description="share of items timing out")
    malformed: float = Field(0.0, ge=0, le=1, description="share of text answers that are garbage")
    refusal: float = Field(
        0.0, ge=0, le=1, description="share of items refused (a permanent error, not retryable)"
    )
    latency_s: float = Field(0.0, ge=0, description="seconds of simulated latency per item")


class SimEditorErrors(_Strict):
    """Probability of each failure mode per edit attempt; the rest (65 %) are correct edits.

    Calibrated with the default judges (pre-filter score_noise 1.2, validator 0.62) and the
    pipeline's default thresholds: about 57 % of attempts fail the pre-filter, 4 % of the rest
    the low-level check and 64 % of the rest the validator at T = 4.7, close to the reference
    run (-57 %, -3 %, -63 %; NHR-METHOD section 5).
    """

    noop: float = Field(0.06, ge=0, le=1, description="nothing changes but the round-trip noise")
    wrong_target: float = Field(
        0.05, ge=0, le=1, description="the change lands on another object, or a wrong value"
    )
    extra_change: float = Field(
        0.08, ge=0, le=1, description="the right change plus an unrequested recolour"
    )
    artefact: float = Field(0.06, ge=0, le=1, description="the right change plus an ugly blob")
    noise: float = Field(
        0.03,
        ge=0,
        le=1,
        description="isolated speckles everywhere (half the time without the edit)",
    )
    color_drift: float = Field(
        0.03, ge=0, le=1, description="the right change plus a global colour shift"
    )
    partial: float = Field(
        0.04, ge=0, le=1, description="half done: faded, half recoloured, or one clause dropped"
    )


class SimGeneratorErrors(_Strict):
    """Probability of each defect per generated source image, drawn independently.

    With the default judge (defect_detection 0.85, yes_no_flip 0.05) about 55 % of sources
    fail the plausibility gate (reference: 56 %); about 15 % of the sources that pass still
    carry a defect, and missing objects among them make the phantom removals that only the
    backward-consistency filter catches.
    """

    missing_object: float = Field(
        0.30, ge=0, le=1, description="one object of the prompt is not drawn"
    )
    duplicate_object: float = Field(
        0.12, ge=0, le=1, description="one object is drawn twice (a copy in a free slot)"
    )
    garbled_object: float = Field(0.22, ge=0, le=1, description="one object is scrambled")
    implausible: float = Field(0.20, ge=0, le=1, description="the world is drawn upside down")


class SimInversionErrors(_Strict):
    """Probability of each kind of bad inverse instruction written by the simulated LLM."""

    vague: float = Field(0.05, ge=0, le=1, description='e.g. "Change it"')
    wrong: float = Field(0.03, ge=0, le=1, description="wrong object, colour, place or value")
    banned_word: float = Field(
        0.04, ge=0, le=1, description="contains back / undo / restore / revert"
    )


class SimBackendConfig(_Strict):
    """One simulated model; the same class serves every role (designer, generator, judge...)."""

    backend: Literal["sim"] = "sim"
    model: str = "sim-v1"
    scale: float = Field(
        0.125, gt=0, le=1, description="render size = requested size x scale (fast quickstart)"
    )
    score_noise: float = Field(
        0.62,
        ge=0,
        description="std-dev of the vision model's score noise; the mean absolute error "
        "against the true score is about 0.8 x this (0.62 -> 0.50 like the fine-tuned "
        "validator, 1.2 -> 0.96 like Qwen2.5-VL-72B)",
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
    )
    score_correlation: float = Field(
        0.7, ge=0, le=1, description="correlation of the adherence and aesthetics noise (halo)"
    )
    aesthetic_noise_ratio: float = Field(
        0.5, ge=0, description="std-dev of the aesthetics noise as a multiple of score_noise"
    )
    wrap_json: float = Field(
        0.2, ge=0, le=1, description="share of design answers wrapped in code fences or prose"
    )
    yes_no_flip: float = Field(0.05, ge=0, le=1, description="chance a yes/no answer is flipped")
    defect_detection: float = Field(
        0.85, ge=0, le=1, description="chance the vision model notices a source defect"
    )
    editor_errors: SimEditorErrors = Field(default_factory=SimEditorErrors)
    generator_errors: SimGeneratorErrors = Field(default_factory=SimGeneratorErrors)
    inversion_errors: SimInversionErrors = Field(default_factory=SimInversionErrors)
    faults: SimFaults = Field(default_factory=SimFaults)
