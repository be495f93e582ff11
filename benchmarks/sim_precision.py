"""Precision of the released triplets against the simulator's ground truth.

Mines the quickstart (or reads an existing run) and labels every candidate and released
triplet with what the simulator knows to be true. Prints the share of correct forward
candidates at each filtering step (all edits, pre-filter, validator, best-of), the share of
correct released triplets per kind (forward, inverse, composite), and which error kinds leak.

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
from nhr.pipeline import release_stage
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
    selected = [t for t in stage_rows(run_dir, "select") if t["status"] == "ok"]
    steps = [
        ("all edits", list(candidates)),
        ("after pre-filter", sorted(prefiltered)),
        ("after validator", sorted(validated)),
        ("after best-of", [t["candidate_id"] for t in selected]),
    ]
    print(f"run: {run_dir}")
    print(f"{'forward candidates':<26}{'count':>8}{'correct':>10}")
    for name, ids in steps:
        correct = sum(labels[i].correct for i in ids)
        share = correct / len(ids) if ids else float("nan")
        print(f"{name:<26}{len(ids):>8}{share:>10.1%}")

    # The released set, every kind, labelled from its own two images and instruction.
    released = [
        r
        for r in stage_rows(run_dir, release_stage(load_config_of(run_dir)))
        if r["status"] == "ok"
    ]
    by_kind: dict[str, list] = {}
    for row in released:
        truth = label_candidate(
            images.get(row["source_image"]), images.get(row["edited_image"]), row["instruction"]
        )
        by_kind.setdefault(row["kind"], []).append(truth)
    print(f"\n{'released triplets':<26}{'count':>8}{'correct':>10}")
    everything = [t for truths in by_kind.values() for t in truths]
    for kind, truths in sorted(by_kind.items()) + [("all kinds", everything)]:
        share = sum(t.correct for t in truths) / len(truths) if truths else float("nan")
        print(f"{kind:<26}{len(truths):>8}{share:>10.1%}")
    print("\nerror kinds leaking into the released set:")
    leaks = Counter(
        f"{kind}: {t.error}" for kind, truths in by_kind.items() for t in truths if not t.correct
    )
    for kind, count in leaks.most_common():
        print(f"  {kind:<28}{count:>5}  ({count / len(everything):.1%} of released)")
    if not leaks:
        print("  none")
    pool = Counter(labels[i].error or "correct" for i in candidates)
    print("\nerror kinds among all edits:", dict(pool.most_common()))


def load_config_of(run_dir: Path):
    import yaml

    from nhr.config import parse_config

    return parse_config(yaml.safe_load((run_dir / "config.yaml").read_text()))


if __name__ == "__main__":
    main()
