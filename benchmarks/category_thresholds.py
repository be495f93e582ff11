"""Per-category validator thresholds at a target precision vs the global T = 4.7.

The loop a user runs, on the simulator with its realistic judges (the quickstart config):
  1. mine a calibration run (seed 1) and have simulated raters rate every candidate the
     validator scored (the pool its thresholds act on): one label set per `--raters` count
     (3: a panel like the paper's 2-4; 10: a larger one), and the simulator's true scores
     (perfect raters) for comparison;
  2. `nhr calibrate`'s rule on each: per category, the lowest threshold whose precision on
     those labels (positive: both scores > 4.0) reaches the target; a category that cannot
     reach it gets the threshold where its precision is surely best (the highest Wilson 95 %
     lower bound), never below 4.7; the same with `--exclude-unreachable` (a category whose
     precision reaches the target at no threshold is excluded: validate drops it), and with
     precision read through its Wilson 95 % interval (`--confidence 0.95`); also the one
     global threshold that reaches it;
  3. mine an evaluation run (seed 0, other prompts and images) with the global 4.7, then redo it
     from `validate` with each threshold setting (same candidates and validator scores), and
     measure the released triplets against the simulator's truth; a global 4.8 and 4.9 beside
     them tell a per-category gain from plain tightening.

Prints one line per setting: released forward triplets and their precision (positive: both
true scores > 4.0, the label the target is set on; in brackets the stricter share with no flaw
at all), the same for all released triplets, and the yield cost (editor calls per released
forward triplet); then each setting's precision gain over the global 4.7 with a paired 95 %
bootstrap interval (the runs share most triplets: source images are resampled together for
both); the last line says which per-category settings raise released forward precision (the
interval above zero), at what cost, and which keep the target precision for fewer editor
calls per released forward triplet. docs/simulator.md
("Per-category thresholds on the simulator") explains the figures.

    python benchmarks/category_thresholds.py [--prompts N] [--calibration-prompts N]
        [--target 0.9] [--raters 3 10] [--calibration-seed 1] [--evaluation-seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _common import quickstart, stage_rows

import nhr
from nhr.backends.sim.truth import label_candidate, true_scores
from nhr.bench.stats import paired_bootstrap
from nhr.calibrate import (
    JudgeScale,
    category_thresholds,
    run_judges,
    threshold_snippet,
)
from nhr.config import parse_config
from nhr.label_sample import candidates, simulated_labels
from nhr.labels import ground_truth
from nhr.pipeline import release_stage
from nhr.store import ImageStore, RunStore

# global thresholds stricter than the paper's, to tell a per-category gain from plain
# tightening at a similar yield
STRICTER_GLOBALS = (4.8, 4.9)


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
    parser.add_argument("--calibration-seed", type=int, default=1, help="run seed (default 1)")
    parser.add_argument("--evaluation-seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument(
        "--raters",
        type=int,
        nargs="+",
        default=[3, 10],
        help="simulated raters per triplet, one label set per value (the paper: 2-4)",
    )
    parser.add_argument(
        "--positive-above",
        type=float,
        default=4.0,
        help="positive label: both scores above this (the paper's 4.0)",
    )
    args = parser.parse_args()
    if not 0 < args.target <= 1:
        parser.error(f"--target is a precision in (0, 1], not {args.target}")
    if min(args.raters) < 1 or min(args.prompts or 1, args.calibration_prompts or 1) < 1:
        parser.error("--raters, --prompts and --calibration-prompts must be at least 1")
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
        config_with(args.calibration_seed, args.calibration_prompts or args.prompts),
        calibration_dir,
        preflight=False,
    )
    store = RunStore(calibration_dir)
    validated = {r["candidate_id"] for r in stage_rows(calibration_dir, "validate")}
    sample = [c for c in candidates(store) if c["item"] in validated]
    label_sets = {
        f"{count} raters": ground_truth(simulated_labels(store, sample, count, seed=7))
        for count in args.raters
    }
    rated = set.intersection(*(set(labels) for labels in label_sets.values()))
    [validator] = [j for j in run_judges(store, rated)[0] if j.name == "validator"]
    operation = {c["item"]: c["operation"] for c in sample}
    items = sorted(rated & set(validator.scores))
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
    for source, scores in (*label_sets.items(), ("true scores", exact)):
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
    settings += [(f"global {t}", None, t) for t in STRICTER_GLOBALS]
    globals_seen = {4.7, *STRICTER_GLOBALS}
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
    results = []
    measured: dict[str, tuple[str, dict]] = {}  # the same keep-rule releases the same rows
    for index, (name, thresholds, global_t) in enumerate(settings):
        rule = json.dumps([thresholds, global_t], sort_keys=True)
        if rule in measured:
            text, result = measured[rule]
            print(f"{name}: as {result['name']}")
            results.append({**result, "name": name})
            continue
        config = config_with(args.evaluation_seed, args.prompts, thresholds)
        config["validate"]["adherence_threshold"] = global_t
        config["validate"]["aesthetics_threshold"] = global_t
        if index == 0:
            nhr.mine(config, base, preflight=False)
            run_dir = base
        else:
            run_dir = work / f"evaluation-{index}"
            shutil.copytree(base, run_dir)
            nhr.mine(config, run_dir, redo_from="validate", preflight=False)
        text, result = describe(name, run_dir, args.positive_above)
        print(text)
        results.append(result)
        measured[rule] = (text, result)
        if index:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(summary(results, args.target))


def summary(results: list[dict], target: float) -> str:
    """The closing lines: each setting's released forward precision minus the global 4.7's
    (paired bootstrap, 95 %) and its yield cost; then the per-category settings whose gain's
    interval lies above zero, and those that keep the target precision for fewer editor calls
    per released forward triplet (where the global 4.7 already reaches the target, loosening
    the reliable categories buys yield)."""
    reference, *others = results

    def figures(result: dict) -> str:
        precision = result["hits"] / result["forward"] if result["forward"] else float("nan")
        return (
            f"{result['forward']} forward at {precision:.3f}, "
            f"{result['calls']:.1f} editor calls each"
        )

    lines, raised = [], []
    for r in others:
        if not r["forward"]:
            lines.append(f"  {r['name']}: releases nothing")
            continue
        gain, low, high = precision_gain(r, reference)
        change = r["forward"] / max(1, reference["forward"]) - 1
        lines.append(
            f"  {r['name']}: precision {gain:+.3f} [{low:+.3f}, {high:+.3f}], "
            f"forward triplets {change:+.0%}, {r['calls']:.1f} editor calls each"
        )
        if r["name"].startswith("per-category") and low > 0:
            raised.append(f"{r['name']}: {figures(r)}, {gain:+.3f} [{low:+.3f}, {high:+.3f}]")
    cheaper = [
        r
        for r in others
        if r["name"].startswith("per-category")
        and r["forward"]
        and r["hits"] / r["forward"] >= target
        and r["calls"] < reference["calls"]
    ]
    yield_verdict = "; ".join(f"{r['name']}: {figures(r)}" for r in cheaper) or "none"
    return (
        "released forward precision against the global 4.7 (paired bootstrap over source "
        "images, 95 %):\n"
        + "\n".join(lines)
        + f"\nsummary: {reference['name']}: {figures(reference)}; per-category settings that "
        f"raise released forward precision (interval above 0): {'; '.join(raised) or 'none'}; "
        f"that keep precision >= {target} for fewer editor calls: {yield_verdict}"
    )


def per_source(rows: list[tuple[str, bool]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for source, hit in rows:
        count, hits = out.get(source, (0, 0))
        out[source] = (count + 1, hits + int(hit))
    return out


def precision_gain(setting: dict, reference: dict) -> tuple[float, float, float]:
    """The setting's released forward precision minus the reference's, with a paired 95 %
    bootstrap interval. Both runs release from the same candidates, so most triplets are in
    both: source images are resampled together for the two (each source's forward triplets
    as one cluster, since one source's edits share its flaws), which measures the difference
    itself rather than two independent precisions."""
    sources = sorted(set(setting["by_source"]) | set(reference["by_source"]))
    table = np.array(
        [
            [*setting["by_source"].get(s, (0, 0)), *reference["by_source"].get(s, (0, 0))]
            for s in sources
        ],
        dtype=float,
    )

    def gain(items: np.ndarray, _seeds: np.ndarray) -> np.ndarray:
        count, hits, ref_count, ref_hits = table[items].sum(axis=0)
        if not count or not ref_count:
            return np.array([np.nan])
        return np.array([hits / count - ref_hits / ref_count])

    point = gain(np.arange(len(sources)), np.zeros(1))[0]
    low, high = paired_bootstrap({"sources": len(sources)}, 1, gain)
    return float(point), float(low[0]), float(high[0])


def describe(name: str, run_dir: Path, positive_above: float) -> tuple[str, dict]:
    images = ImageStore(run_dir / "images")
    config = parse_config(RunStore(run_dir).read_config())
    released = [r for r in stage_rows(run_dir, release_stage(config)) if r["status"] == "ok"]
    correct, positive = {}, {}
    for r in released:
        images_of = (images.get(r["source_image"]), images.get(r["edited_image"]))
        correct[r["triplet_id"]] = label_candidate(*images_of, r["instruction"]).correct
        scores = true_scores(*images_of, r["instruction"])
        positive[r["triplet_id"]] = min(scores) > positive_above
    forward = [r["triplet_id"] for r in released if r["kind"] == "forward"]
    attempts = sum(1 for r in stage_rows(run_dir, "edit"))

    def share(table: dict, ids) -> float:
        ids = list(ids)
        return float(np.mean([table[t] for t in ids])) if ids else float("nan")

    # Precision as the target is set (positive: both true scores > 4.0), and the stricter
    # share with no flaw at all (truth.label_candidate), for forward and all released.
    calls = attempts / max(1, len(forward))
    source_of = {r["triplet_id"]: r["source_image"] for r in released}
    result = {
        "name": name,
        "forward": len(forward),
        "hits": sum(positive[t] for t in forward),
        "calls": calls,
        # per source image: (forward triplets, of them positive), for the paired comparison
        "by_source": per_source([(source_of[t], positive[t]) for t in forward]),
    }
    return (
        f"{name}: released forward {len(forward)} precision {share(positive, forward):.3f} "
        f"(flawless {share(correct, forward):.3f}) | all released {len(correct)} precision "
        f"{share(positive, correct):.3f} (flawless {share(correct, correct):.3f}) | "
        f"editor calls per released forward {calls:.2f}"
    ), result


if __name__ == "__main__":
    main()
