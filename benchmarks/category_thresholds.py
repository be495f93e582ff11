"""Per-category validator thresholds at a target precision vs the global T = 4.7.

The loop a user runs, on the simulator with its realistic judges (the quickstart config):
  1. mine a calibration run (seed 1) and have simulated raters (3 per triplet) rate every
     candidate the validator scored (the pool its thresholds act on);
  2. `nhr calibrate`'s rule: per category, the lowest threshold whose precision on those labels
     (positive: both bias-corrected rater scores > 4.0) reaches the target, never loosening a
     category that cannot reach it; the same with `--exclude-unreachable` (a category whose
     precision reaches the target at no threshold is excluded: validate drops it), and with
     precision read through its Wilson 95 % interval (`--confidence 0.95`); also the one global
     threshold that reaches it, and all again from the simulator's true scores (perfect
     raters), for comparison;
  3. mine an evaluation run (seed 0, other prompts and images) with the global 4.7, then redo it
     from `validate` with each threshold setting (same candidates and validator scores), and
     measure the released forward triplets against the simulator's truth.

Prints one line per setting: released forward triplets, their precision against truth, all
released triplets and their precision, and the yield cost (editor calls per released forward
triplet).

    python benchmarks/category_thresholds.py [--prompts N] [--calibration-prompts N]
        [--target 0.9]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _common import quickstart, stage_rows

import nhr
from nhr.backends.sim.truth import label_candidate, true_scores
from nhr.calibrate import JudgeScale, category_thresholds, run_judges, threshold_snippet
from nhr.config import parse_config
from nhr.label_sample import candidates, simulated_labels
from nhr.labels import ground_truth
from nhr.pipeline import release_stage
from nhr.store import ImageStore, RunStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="default: the quickstart's")
    parser.add_argument(
        "--calibration-prompts",
        type=int,
        default=None,
        help="prompts of the calibration run (default: as --prompts)",
    )
    parser.add_argument("--target", type=float, default=0.9, help="target precision")
    parser.add_argument("--raters", type=int, default=3, help="simulated raters per triplet")
    parser.add_argument(
        "--positive-above",
        type=float,
        default=4.0,
        help="positive label: both scores above this (the paper's 4.0)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nhr-category-thresholds-"))
    try:
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def config_with(seed: int, prompts: int | None, thresholds: dict | None = None) -> dict:
    config = quickstart()
    config["run"]["seed"] = seed
    if prompts:
        config["run"]["prompts"] = prompts
    if thresholds is not None:
        config["validate"]["thresholds"] = thresholds
    return config


def run(work: Path, args) -> None:
    # 1. calibration run and its labels
    calibration_dir = work / "calibration"
    nhr.mine(
        config_with(1, args.calibration_prompts or args.prompts), calibration_dir, preflight=False
    )
    store = RunStore(calibration_dir)
    validated = {r["candidate_id"] for r in stage_rows(calibration_dir, "validate")}
    sample = [c for c in candidates(store) if c["item"] in validated]
    rows = simulated_labels(store, sample, args.raters, seed=7)
    labels = ground_truth(rows)
    [validator] = [j for j in run_judges(store, set(labels))[0] if j.name == "validator"]
    operation = {c["item"]: c["operation"] for c in sample}
    items = sorted(set(labels) & set(validator.scores))
    seen = np.array([validator.scores[i] for i in items])
    names = [operation[i] for i in items]
    by_item = {c["item"]: c for c in sample}
    exact = {
        i: true_scores(
            store.images.get(by_item[i]["source_image"]),
            store.images.get(by_item[i]["edited_image"]),
            by_item[i]["instruction"],
        )
        for i in items
    }
    kept = (seen >= 4.7 - 1e-6).all(1)
    found = {}
    for source, scores in (("rater labels", labels), ("true scores", exact)):
        positive = np.array([(np.array(scores[i]) > args.positive_above).all() for i in items])
        print(
            f"calibration pool: {len(items)} validated candidates; precision at 4.7 against "
            f"{source}: {positive[kept].mean():.3f}"
        )
        [overall] = category_thresholds(
            seen, positive, ["all"] * len(items), JudgeScale(), args.target, floor=(4.7, 4.7)
        ).values()
        variants = {
            "": {},
            ", unreachable excluded": {"exclude_unreachable": True},
            ", Wilson 95 %, unreachable excluded": {
                "exclude_unreachable": True,
                "confidence": 0.95,
            },
        }
        for suffix, options in variants.items():
            chosen = category_thresholds(
                seen, positive, names, JudgeScale(), args.target, floor=(4.7, 4.7), **options
            )
            found[f"{source}{suffix}"] = (chosen, overall)
            reached = sum(entry["reached"] for entry in chosen.values())
            excluded = sum(entry["exclude"] for entry in chosen.values())
            print(
                f"  {source}{suffix}: {reached} of {len(chosen)} categories reach "
                f"{args.target}, {excluded} excluded (global {overall['adherence']:g}): "
                + ", ".join(
                    f"{k} {'excl' if v['exclude'] else format(v['adherence'], 'g')}"
                    f" (best {v['best_precision']:.2f}, n {v['n']})"
                    for k, v in sorted(chosen.items())
                )
            )

    # 2. evaluation runs: the same candidates, one keep-rule each
    def snippet(chosen):
        return threshold_snippet(chosen)["validate"]["thresholds"]

    settings = [("global 4.7 (paper)", None, 4.7)]
    globals_seen = set()
    for source, (chosen, overall) in found.items():
        settings.append((f"per-category at {args.target}, {source}", snippet(chosen), 4.7))
        if overall["adherence"] not in globals_seen:
            globals_seen.add(overall["adherence"])
            settings.append(
                (
                    f"global {overall['adherence']:g} at {args.target}, {source}",
                    None,
                    overall["adherence"],
                )
            )
    base = work / "evaluation-global"
    for index, (name, thresholds, global_t) in enumerate(settings):
        config = config_with(0, args.prompts, thresholds)
        config["validate"]["adherence_threshold"] = global_t
        config["validate"]["aesthetics_threshold"] = global_t
        if index == 0:
            nhr.mine(config, base, preflight=False)
            run_dir = base
        else:
            run_dir = work / f"evaluation-{index}"
            shutil.copytree(base, run_dir)
            nhr.mine(config, run_dir, redo_from="validate", preflight=False)
        print(describe(name, run_dir))


def describe(name: str, run_dir: Path) -> str:
    images = ImageStore(run_dir / "images")
    config = parse_config(RunStore(run_dir).read_config())
    released = [r for r in stage_rows(run_dir, release_stage(config)) if r["status"] == "ok"]
    correct = {
        r["triplet_id"]: label_candidate(
            images.get(r["source_image"]), images.get(r["edited_image"]), r["instruction"]
        ).correct
        for r in released
    }
    forward = [r["triplet_id"] for r in released if r["kind"] == "forward"]
    attempts = sum(1 for r in stage_rows(run_dir, "edit"))
    precision_forward = np.mean([correct[t] for t in forward]) if forward else float("nan")
    precision_all = np.mean(list(correct.values())) if correct else float("nan")
    return (
        f"{name}: released forward {len(forward)} precision {precision_forward:.3f} | "
        f"all released {len(correct)} precision {precision_all:.3f} | "
        f"editor calls per released forward {attempts / max(1, len(forward)):.2f}"
    )


if __name__ == "__main__":
    main()
