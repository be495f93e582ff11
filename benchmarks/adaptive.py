"""Adaptive vs uniform scheduling: editor calls per released triplet, at the same budget.

Mines the quickstart world twice, with `schedule.policy: uniform` (M = 5 seeds for every pair)
and with `adaptive` (rounds of one seed, a pair leaving once it has a passing candidate, up
to M = 5), both under the quickstart's budget, and prints for each: editor calls (the editor
requests sent, retries included), released triplets (every kind), editor calls per released
triplet, and the precision of the released forward triplets against the simulator's truth.

    python benchmarks/adaptive.py [--prompts N] [--margin X] [--min-yield Y] [--budget EDITS]
                                  [--seed S] [--keep DIR]

Adaptive runs with margin 0.05 and min_yield 0.1 unless told otherwise (README, Adaptive
scheduling); `--margin 0 --min-yield 0` measures early stopping alone.

The last line is `adaptive vs uniform: editor_calls_per_released A vs U (-P %), precision
a vs u` (P: how much fewer calls per released triplet adaptive spends).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from _common import quickstart, stage_rows

import nhr
from nhr.backends.sim.truth import label_candidate
from nhr.store import ImageStore


def measure(config: dict, run_dir: Path) -> dict:
    started = time.perf_counter()
    result = nhr.mine(config, run_dir)
    seconds = time.perf_counter() - started
    edit = next(s for s in result.stats["stages"] if s["stage"] == "edit")
    released = result.stats["dataset"]["rows"]
    images = ImageStore(run_dir / "images")
    forward = [r for r in stage_rows(run_dir, "select") if r["status"] == "ok"]
    release = {
        r["triplet_id"] for r in stage_rows(run_dir, _release(run_dir)) if r["status"] == "ok"
    }
    forward = [r for r in forward if r["triplet_id"] in release]
    correct = sum(
        label_candidate(
            images.get(r["source_image"]), images.get(r["edited_image"]), r["instruction"]
        ).correct
        for r in forward
    )
    return {
        "editor_calls": edit["model_calls"],
        "edit_jobs": edit["rows_in"],
        "released": released,
        "released_forward": len(forward),
        "calls_per_released": edit["model_calls"] / released if released else float("nan"),
        "precision": correct / len(forward) if forward else float("nan"),
        "seconds": seconds,
    }


def _release(run_dir: Path) -> str:
    import yaml

    from nhr.config import parse_config
    from nhr.pipeline import release_stage

    return release_stage(parse_config(yaml.safe_load((run_dir / "config.yaml").read_text())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="default: the quickstart's")
    parser.add_argument("--margin", type=float, default=0.05, help="adaptive schedule.margin")
    parser.add_argument("--min-yield", type=float, default=0.1, help="adaptive schedule.min_yield")
    parser.add_argument(
        "--budget", type=int, help="schedule.budget.edits of both (default: the quickstart's)"
    )
    parser.add_argument("--seed", type=int, help="run.seed (default: the quickstart's)")
    parser.add_argument("--keep", type=Path, help="mine into DIR/uniform and DIR/adaptive")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="nhr-adaptive-"))
    base = quickstart()
    if args.prompts:
        base["run"]["prompts"] = args.prompts
    if args.budget:
        base["schedule"]["budget"] = {"edits": args.budget}
    if args.seed is not None:
        base["run"]["seed"] = args.seed
    uniform = copy.deepcopy(base)
    uniform["schedule"]["policy"] = "uniform"
    adaptive = copy.deepcopy(base)
    adaptive["schedule"].update(policy="adaptive", margin=args.margin, min_yield=args.min_yield)
    budget = base["schedule"]["budget"]
    print(
        f"quickstart world, seed {base['run']['seed']}, {base['run']['prompts']} prompts, M = "
        f"{base['schedule']['seeds_per_pair']}, budget {budget} (same for both); adaptive "
        f"margin {args.margin}, min_yield {args.min_yield}"
    )
    results = {}
    for name, config in (("uniform", uniform), ("adaptive", adaptive)):
        results[name] = measure(config, root / name)
        r = results[name]
        print(
            f"{name:<9} editor calls {r['editor_calls']:>6}  edit jobs {r['edit_jobs']:>6}  "
            f"released {r['released']:>5} ({r['released_forward']} forward)  "
            f"editor_calls_per_released {r['calls_per_released']:.2f}  "
            f"forward precision {r['precision']:.3f}  ({r['seconds']:.0f} s)"
        )
    a, u = results["adaptive"], results["uniform"]
    change = (a["calls_per_released"] / u["calls_per_released"] - 1) * 100
    print(
        f"adaptive vs uniform: editor_calls_per_released {a['calls_per_released']:.2f} vs "
        f"{u['calls_per_released']:.2f} ({change:+.0f} %), precision {a['precision']:.3f} vs "
        f"{u['precision']:.3f}"
    )


if __name__ == "__main__":
    main()
