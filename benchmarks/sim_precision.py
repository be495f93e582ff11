"""Precision of the released triplets against the simulator's ground truth.

Mines the quickstart (or reads an existing run) and labels every candidate with what the
simulator knows to be true. Prints the share of correct candidates at each filtering step —
all edits, after the pre-filter, after the validator, released — and which error kinds leak
into the released set.

    python benchmarks/sim_precision.py [--run-dir RUN] [--prompts N]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from _common import quickstart, stage_rows

import nhr
from nhr.backends.sim.truth import label_candidate
from nhr.store import ImageStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="an existing sim run (default: mine one)")
    parser.add_argument("--prompts", type=int, default=None)
    args = parser.parse_args()
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="nhr-precision-"))
        config = quickstart()
        if args.prompts:
            config["run"]["prompts"] = args.prompts
        nhr.mine(config, run_dir)
    images = ImageStore(run_dir / "images")
    candidates = {c["candidate_id"]: c for c in stage_rows(run_dir, "edit") if c["status"] == "ok"}
    labels = {}
    for candidate_id, c in candidates.items():
        labels[candidate_id] = label_candidate(
            images.get(c["source_image"]), images.get(c["edited_image"]), c["instruction"]
        )
    prefiltered = {
        r["candidate_id"] for r in stage_rows(run_dir, "prefilter") if r["status"] == "ok"
    }
    validated = {r["candidate_id"] for r in stage_rows(run_dir, "validate") if r["status"] == "ok"}
    released = [t for t in stage_rows(run_dir, "select") if t["status"] == "ok"]
    steps = [
        ("all edits", list(candidates)),
        ("after pre-filter", sorted(prefiltered)),
        ("after validator", sorted(validated)),
        ("released (best-of)", [t["candidate_id"] for t in released]),
    ]
    print(f"run: {run_dir}")
    print(f"{'step':<22}{'candidates':>11}{'correct':>10}")
    for name, ids in steps:
        correct = sum(labels[i].correct for i in ids)
        share = correct / len(ids) if ids else float("nan")
        print(f"{name:<22}{len(ids):>11}{share:>10.1%}")
    leaks = Counter(
        labels[t["candidate_id"]].error for t in released if not labels[t["candidate_id"]].correct
    )
    print("\nerror kinds among released forward triplets:")
    for kind, count in leaks.most_common():
        print(f"  {kind:<16}{count:>5}  ({count / len(released):.1%} of released)")
    if not leaks:
        print("  none")
    pool = Counter(labels[i].error or "correct" for i in candidates)
    print("\nerror kinds among all edits:", dict(pool.most_common()))


if __name__ == "__main__":
    main()
