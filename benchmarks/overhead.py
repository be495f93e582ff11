"""The framework's own cost: time per candidate spent outside backend calls.

Runs the same pipeline three ways in one process, side by side:
  1. quickstart scale (images rendered at 1/8 of ~1 MP),
  2. full ~1 MP images (fewer prompts),
  3. quickstart scale with every backend call costing 50 ms per item (simulated latency),
and prints, for each, the framework time per edit candidate (wall time minus time inside
backend calls, which includes the simulator's own rendering) and the share of wall time spent
inside backend calls. With real models the backend share should dominate.

    python benchmarks/overhead.py [--prompts N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import quickstart

import nhr

ROLES = ("designer", "generator", "gate", "editor", "prefilter", "validator")


def measure(config: dict) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="nhr-overhead-"))
    started = time.perf_counter()
    result = nhr.mine(config, run_dir)
    wall = time.perf_counter() - started
    stages = {s["stage"]: s for s in result.stats["stages"]}
    in_models = sum(s["model_seconds"] for s in stages.values())
    candidates = stages["edit"]["rows_out"] or 1
    return {
        "wall": wall,
        "candidates": candidates,
        "framework_per_candidate_ms": 1000 * (wall - in_models) / candidates,
        "backend_share": in_models / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    args = parser.parse_args()

    small = quickstart()
    small["run"]["prompts"] = args.prompts

    full = quickstart()
    full["run"]["prompts"] = max(4, args.prompts // 3)
    full["models"]["generator"]["scale"] = 1.0

    slow = quickstart()
    slow["run"]["prompts"] = max(4, args.prompts // 3)
    for role in ROLES:
        slow["models"][role].setdefault("faults", {})["latency_s"] = 0.05

    print(
        f"{'setting':<34}{'candidates':>11}{'wall s':>9}{'framework ms/cand':>19}{'in backends':>13}"
    )
    for name, config in (
        ("quickstart scale (1/8 of 1 MP)", small),
        ("full ~1 MP images", full),
        ("quickstart + 50 ms/item backends", slow),
    ):
        m = measure(config)
        print(
            f"{name:<34}{m['candidates']:>11}{m['wall']:>9.1f}"
            f"{m['framework_per_candidate_ms']:>19.2f}{m['backend_share']:>13.1%}"
        )


if __name__ == "__main__":
    main()
