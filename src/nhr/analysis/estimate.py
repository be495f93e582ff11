"""Compute estimates: what a target dataset size costs, from this run's measured rates.

The paper's advice (docs/method.md §5): target ~= attempts x product(stage survival) x
augmentation. Equivalently, and with fewer assumptions, every stage's model calls and seconds
scale with the number of released triplets: calls per released triplet, measured here, times
the target.
"""

from __future__ import annotations

from typing import Any

from nhr.config import NhrConfig
from nhr.stages.design import design_batches


def compute_estimate(
    stats: dict[str, Any], config: NhrConfig, target: int
) -> dict[str, Any] | None:
    """Expected calls and model-seconds per stage for `target` released triplets.

    Every stage scales with the released count, except design, whose calls depend on the
    number of prompts per call (B): it is estimated as the batches the needed prompts take,
    times the measured calls per batch (retries included).
    """
    released = (stats.get("dataset") or {}).get("rows") or 0
    if not released:
        return None
    scale = target / released
    prompts = config.run.prompts
    prompts_needed = round(prompts * scale)
    stages = []
    for stage in stats["stages"]:
        if not stage["model_calls"]:
            continue
        factor = scale
        if stage["stage"] == "design":
            factor = design_batches(config, prompts_needed) / design_batches(config, prompts)
        stages.append(
            {
                "stage": stage["stage"],
                "calls_per_released": stage["model_calls"] / released,
                "expected_calls": round(stage["model_calls"] * factor),
                "expected_model_seconds": round(stage["model_seconds"] * factor, 1),
            }
        )
    total_calls = sum(s["model_calls"] for s in stats["stages"])
    edit = next((s for s in stats["stages"] if s["stage"] == "edit"), None)
    return {
        "target_released": target,
        "measured_released": released,
        "prompts_needed": prompts_needed,
        "calls_per_released": total_calls / released,
        "editor_calls_per_released": (edit["model_calls"] / released) if edit else None,
        "stages": stages,
    }


def estimate_markdown(estimate: dict[str, Any]) -> str:
    lines = [
        f"For **{estimate['target_released']:,}** released triplets (this run released "
        f"{estimate['measured_released']:,}): about **{estimate['prompts_needed']:,} prompts**, "
        f"{estimate['calls_per_released']:.2f} model calls per released triplet "
        f"({estimate['editor_calls_per_released'] or 0:.2f} of them editor calls).",
        "",
        "| stage | calls per released | expected calls | expected model-seconds |",
        "|---|---:|---:|---:|",
    ]
    for s in estimate["stages"]:
        lines.append(
            f"| {s['stage']} | {s['calls_per_released']:.3f} | {s['expected_calls']:,} | "
            f"{s['expected_model_seconds']:,} |"
        )
    return "\n".join(lines)


# The reference run (arXiv 2507.14119, survival table; docs/method.md §5): sources that passed
# the gate, edit attempts on them (M = 5 editor seeds per pair) and triplets released.
REFERENCE_SOURCES, REFERENCE_ATTEMPTS, REFERENCE_RELEASED = 515_584, 3_072_385, 720_088
REFERENCE_ATTEMPTS_PER_SOURCE = REFERENCE_ATTEMPTS / REFERENCE_SOURCES


def reference_calls(config: NhrConfig, prompts: int) -> dict[str, int]:
    """Model calls per stage to expect for `prompts` prompts before anything is mined, keyed
    like `with_roles` ("edit (editor)"); see `_reference_stage_calls`."""
    return with_roles(config, _reference_stage_calls(config, prompts))


def reference_released(config: NhrConfig, prompts: int) -> int:
    """Released triplets to expect at the reference run's yield per editor attempt."""
    attempts = _reference_stage_calls(config, prompts)["edit"]
    return round(attempts * REFERENCE_RELEASED / REFERENCE_ATTEMPTS)


def with_roles(config: NhrConfig, calls: dict[str, float]) -> dict[str, int]:
    """Calls keyed by stage, keyed instead by the stage and the model roles it calls ("edit
    (editor)"), rounded; stages without calls left out."""
    from nhr.pipeline import build_stages

    roles = {stage.name: stage.roles for stage in build_stages(config)}
    return {
        f"{stage} ({', '.join(roles[stage])})" if roles.get(stage) else stage: round(count)
        for stage, count in calls.items()
        if count
    }


def _reference_stage_calls(config: NhrConfig, prompts: int) -> dict[str, float]:
    """Model calls per stage for `prompts` prompts: this config's N, M, B, budget and
    sampling, and the reference run's survival rates per stage. Editor attempts per gated source are the
    reference's (its edit budget): without a budget a run makes as many as its designer writes
    edits per prompt, times M, which only a pilot run measures. The pre-filter's checks run
    one after another on the candidates still in: the count is at most one per check."""
    from nhr.analysis.survival import REFERENCE_CHANGE as ref

    sources = prompts * config.generate.images_per_prompt
    passed = sources * (1 + ref["plausibility gate"])
    attempts = passed * REFERENCE_ATTEMPTS_PER_SOURCE * config.schedule.seeds_per_pair / 5
    budget = config.schedule.budget
    if budget.edits is not None:
        attempts = min(attempts, budget.edits)
    if budget.cost is not None and budget.cost_per_megapixel == 0 and budget.cost_per_edit > 0:
        attempts = min(attempts, budget.cost / budget.cost_per_edit)
    prefilter = config.prefilter
    checks = sum((prefilter.score, prefilter.unwanted_changes, prefilter.aesthetics))
    validated = attempts * (1 + ref["pre-filter (VLM)"]) * (1 + ref["low-level check"])
    validate = config.validate_
    judged = validated * validate.samples
    if validate.second_judge:  # the second judge: every candidate (mean) or the passes
        judged *= 2 if validate.second_judge_rule == "mean" else 1 + (1 + ref["validator"])
    forward = validated * (1 + ref["validator"]) * (1 + ref["best-of selection"])
    calls = {
        "design": design_batches(config, prompts),
        "generate": sources,
        "plausibility": sources * config.plausibility.samples if config.plausibility.enabled else 0,
        "edit": attempts,
        "prefilter": attempts * checks,
        "validate": judged,
    }
    if config.invert.enabled:
        calls["invert"] = forward
        if config.backward.enabled:
            calls["backward"] = forward  # every inverse is scored
        if config.compose.enabled and config.compose.revalidate:
            calls["compose"] = forward * (1 + ref["inversion"]) * ref["composition"]
    return calls
