"""Configuration of the simulator backend (one entry per model role in the run config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    """Probability of each failure mode per edit attempt; the rest (57 %) are correct edits.

    Each flaw has a size (`minor_share` of them are near-misses) and every edit a small
    `finish` imperfection, so true quality is continuous. Calibrated with the quickstart's
    judges (pre-filter `qwen2.5-vl-72b`, validator `tuned-gemini-2.0-flash`) and thresholds:
    every survival step within a few points of the reference run, about 15 % of the released
    triplets truly defective (docs/simulator.md).
    """

    noop: float = Field(
        0.03,
        ge=0,
        le=1,
        description="nothing changes but the round-trip noise",
        json_schema_extra=affects_role(),
    )
    wrong_target: float = Field(
        0.09,
        ge=0,
        le=1,
        description="the change lands on another object, or a wrong value",
        json_schema_extra=affects_role(),
    )
    extra_change: float = Field(
        0.07,
        ge=0,
        le=1,
        description="the right change plus an unrequested recolour",
        json_schema_extra=affects_role(),
    )
    artefact: float = Field(
        0.09,
        ge=0,
        le=1,
        description="the right change plus an ugly blob",
        json_schema_extra=affects_role(),
    )
    noise: float = Field(
        0.015,
        ge=0,
        le=1,
        description="isolated speckles everywhere (half the time without the edit)",
        json_schema_extra=affects_role(),
    )
    color_drift: float = Field(
        0.045,
        ge=0,
        le=1,
        description="the right change plus a global colour shift",
        json_schema_extra=affects_role(),
    )
    partial: float = Field(
        0.11,
        ge=0,
        le=1,
        description="half done: faded, half recoloured, or one clause dropped",
        json_schema_extra=affects_role(),
    )
    minor_share: float = Field(
        0.6,
        ge=0,
        le=1,
        description="share of flawed edits whose flaw is minor (a faint left-over shadow, a "
        "small side change, a small blob, a slight drift): near-misses a careful rater scores "
        "about 4.0-4.7",
        json_schema_extra=affects_role(),
    )
    finish: float = Field(
        0.25,
        ge=0,
        le=1,
        description="mean small imperfection of every edit, in score points (a soft seam, a "
        "slightly off texture); it keeps correct edits from all scoring a perfect 5",
        json_schema_extra=affects_role(),
    )


class SimGeneratorErrors(_Strict):
    """Probability of each defect per generated source image, drawn independently.

    With the default gate (defect_detection 0.8, yes_no_flip 0.05) about 55 % of sources
    fail the plausibility gate (reference: 56 %); some of the sources that pass still carry a
    defect (the paper's audit found defects inherited from the source), and missing objects
    among them make the phantom removals that only the backward-consistency filter catches.
    `roughness` is not a defect: it is how far from perfectly pretty a source is.
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
        0.26, ge=0, le=1, description="one object is scrambled", json_schema_extra=affects_role()
    )
    implausible: float = Field(
        0.26,
        ge=0,
        le=1,
        description="the world is drawn upside down",
        json_schema_extra=affects_role(),
    )
    roughness: float = Field(
        0.15,
        ge=0,
        le=1,
        description="mean aesthetic roughness of a source, in score points: generated images "
        "are not all equally pretty, and an edit keeps its source's roughness",
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
        description="the plain judge (no `judge` profile): std-dev of its score noise; the "
        "mean absolute error against the true score is about 0.8 x this",
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
        0.8,
        ge=0,
        le=1,
        description="chance the vision model notices a source defect",
        json_schema_extra=affects_role(),
    )
    gate_shared: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the gate's error (whether it notices a defect) common to every "
        "gate model on the same image: a defect one model misses is subtle for the others too; "
        "0: each model's draws are its own (benchmarks/quality_levers.py uses 0.4, the judge "
        "profiles' `shared`)",
        json_schema_extra=affects_role(),
    )
    gate_sample_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="share of the gate model's own error drawn afresh per sampled request "
        "(plausibility.samples > 1); the rest is its stable opinion of the image, so K samples "
        "catch some of the defects the greedy answer misses, not all",
        json_schema_extra=affects_role(),
    )
    judge: str | None = Field(
        None,
        description="a named judge profile (judges.PROFILES: tuned-gemini-2.0-flash, "
        "qwen2.5-vl-72b, gemini-2.5-pro, gemini-2.0-flash) for the score and yes/no checks; "
        "null: one plain Gaussian judge set by score_noise and the settings below",
        json_schema_extra=affects_role(),
    )
    blind_spots: dict[str, float] | None = Field(
        None,
        description="flaw kind -> chance the judge reads an edit as if that flaw were absent; "
        "replaces the profile's entries it names (needs judge)",
        json_schema_extra=affects_role(),
    )
    judge_params: dict[str, float | dict[str, float]] | None = Field(
        None,
        description="replaces the named numeric settings of the judge profile (needs judge), "
        "e.g. {pairwise_noise: 1.0, position_bias: 0.2}; a per-operation setting "
        "(category_noise, category_bias, category_blind_spots) takes a mapping operation -> "
        "number that replaces the profile's entries it names; see judges.JudgeProfile",
        json_schema_extra=affects_role(),
    )
    # sections: their own fields say what they change
    editor_errors: SimEditorErrors = Field(default_factory=SimEditorErrors)
    generator_errors: SimGeneratorErrors = Field(default_factory=SimGeneratorErrors)
    inversion_errors: SimInversionErrors = Field(default_factory=SimInversionErrors)
    faults: SimFaults = Field(default_factory=SimFaults)

    @field_validator("judge")
    @classmethod
    def _known_judge(cls, value: str | None) -> str | None:
        if value is not None:
            from nhr.backends.sim.judges import profile

            profile(value)  # a ValueError that lists the known profiles
        return value

    @field_validator("blind_spots")
    @classmethod
    def _known_flaws(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            from nhr.backends.sim.judges import FLAW_KINDS

            for kind, chance in value.items():
                if kind not in FLAW_KINDS:
                    raise ValueError(f"unknown flaw kind {kind!r}; known: {', '.join(FLAW_KINDS)}")
                if not 0 <= chance <= 1:
                    raise ValueError(f"blind spot chance of {kind} must be within 0..1")
        return value

    @field_validator("judge_params")
    @classmethod
    def _known_judge_params(cls, value: dict | None) -> dict | None:
        if value is not None:
            from nhr.backends.sim.judges import PER_OPERATION, JudgeProfile

            numeric = [n for n, f in JudgeProfile.model_fields.items() if f.annotation is float]
            unknown = [name for name in value if name not in numeric + list(PER_OPERATION)]
            if unknown:
                raise ValueError(
                    f"unknown judge setting(s) {unknown}; numeric settings: {', '.join(numeric)}; "
                    f"per-operation settings: {', '.join(PER_OPERATION)}"
                )
            for name, setting in value.items():
                if (name in PER_OPERATION) != isinstance(setting, dict):
                    kind = "a mapping operation -> number" if name in PER_OPERATION else "a number"
                    raise ValueError(f"judge setting {name} must be {kind}")
            JudgeProfile(**value)  # a ValueError naming a value out of its range
        return value

    def judge_profile(self):
        """The judge profile of this model with its overrides, or None (the plain judge)."""
        if self.judge is None:
            return None
        from nhr.backends.sim.judges import profile

        base = profile(self.judge)
        if not self.blind_spots and not self.judge_params:
            return base
        update: dict = dict(self.judge_params or {})
        for name, setting in update.items():
            if isinstance(setting, dict):  # per operation: over the profile's own entries
                update[name] = getattr(base, name) | setting
        if self.blind_spots:
            update["blind_spots"] = base.blind_spots | self.blind_spots
        return base.model_copy(update=update)
