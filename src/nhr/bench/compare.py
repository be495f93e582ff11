"""`nhr bench --compare A B`: two benched editors side by side, with the difference B - A
and its 95 % interval from a paired, seeded bootstrap (see stats.paired_bootstrap).

Only units (item, seed) scored in both folders are compared, so a judge failure on one side
removes the unit from both. Each bootstrap draw recomputes the benchmark's own figure (a
macro or micro mean, `OVERALL` of the benchmark module) for both editors from the same
resampled items and seeds.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np

from nhr.bench import benchmark_module
from nhr.bench.stats import paired_bootstrap


def read_folder(location: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from nhr.store import RunStore

    store = RunStore(location)
    try:
        bench = json.loads(store.storage.read_bytes("bench.json"))
        raw = store.storage.read_bytes("scores.jsonl").decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{location} holds no finished `nhr bench` output") from None
    return bench, [json.loads(line) for line in raw.splitlines() if line.strip()]


def compare(a: str, b: str, rounds: int = 2000, seed: int = 0) -> dict[str, Any]:
    bench_a, rows_a = read_folder(a)
    bench_b, rows_b = read_folder(b)
    if bench_a["benchmark"] != bench_b["benchmark"]:
        raise ValueError(f"{a} is {bench_a['benchmark']} but {b} is {bench_b['benchmark']}")
    module = benchmark_module(bench_a["benchmark"])
    seeds = min(bench_a["seeds"], bench_b["seeds"])
    scored_a = {(r["key"], r["seed"]): r for r in rows_a if r["status"] != "judge_failed"}
    scored_b = {(r["key"], r["seed"]): r for r in rows_b if r["status"] != "judge_failed"}
    keys_by_task: dict[str, list[str]] = {task: [] for task in module.TASKS}
    for key, task in sorted({(r["key"], r["task"]) for r in rows_a}):
        if any((key, s) in scored_a and (key, s) in scored_b for s in range(seeds)):
            keys_by_task[task].append(key)
    order = [(task, key) for task in module.TASKS for key in keys_by_task[task]]
    if not order:
        raise ValueError(
            f"{a} and {b} have no item scored in both (another language or data?): "
            "nothing to compare"
        )
    task_of = np.array([module.TASKS.index(task) for task, _ in order], dtype=int)
    result: dict[str, Any] = {
        "benchmark": module.NAME,
        "a": {"editor": bench_a["editor"], "judge": bench_a["judge"], "folder": a},
        "b": {"editor": bench_b["editor"], "judge": bench_b["judge"], "folder": b},
        "same_judge": bench_a["judge"] == bench_b["judge"],
        "paired_units": 0,
        "bootstrap": {"rounds": rounds, "seed": seed},
        "metrics": {},
    }
    for metric in module.METRICS:
        values = np.full((2, len(order), seeds), np.nan)
        for i, (_, key) in enumerate(order):
            for s in range(seeds):
                ra, rb = scored_a.get((key, s)), scored_b.get((key, s))
                if ra is not None and rb is not None and metric in ra and metric in rb:
                    values[0, i, s], values[1, i, s] = ra[metric], rb[metric]
        result["paired_units"] = int(np.sum(~np.isnan(values[0])))
        kind = module.OVERALL[metric]

        def figures(items: np.ndarray, chosen: np.ndarray, values=values, kind=kind):
            return _figures(values[:, items][:, :, chosen], task_of[items], len(module.TASKS), kind)

        everything = figures(np.arange(len(order)), np.arange(seeds))
        groups = {task: len(keys_by_task[task]) for task in module.TASKS}
        low, high = paired_bootstrap(
            groups, seeds, lambda i, s: figures(i, s)[2], rounds=rounds, seed=seed
        )
        names = ["overall", *module.TASKS]
        entries = {}
        for j, name in enumerate(names):
            if math.isnan(everything[2][j]):
                continue
            entries[name] = {
                "a": round(float(everything[0][j]), 4),
                "b": round(float(everything[1][j]), 4),
                "diff": round(float(everything[2][j]), 4),
                "ci": [round(float(low[j]), 4), round(float(high[j]), 4)],
                "significant": bool(low[j] > 0 or high[j] < 0),
            }
        result["metrics"][metric] = {
            "overall": entries.get("overall"),
            "by_task": {t: entries[t] for t in module.TASKS if t in entries},
        }
    return result


def _figures(values: np.ndarray, task_of: np.ndarray, tasks: int, kind: str) -> np.ndarray:
    """[a, b, b - a] x [overall, task 0, task 1, ...]: per seed the benchmark's figure, then
    the mean over seeds (as bench.json reports)."""
    out = np.full((3, tasks + 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an empty task
        for side in (0, 1):
            per_task = np.full((tasks, values.shape[2]), np.nan)
            for t in range(tasks):
                rows = values[side, task_of == t]
                if rows.size:
                    per_task[t] = np.nanmean(rows, axis=0)
            if kind == "macro":
                overall = np.nanmean(per_task, axis=0)
            else:
                overall = np.nanmean(values[side], axis=0)
            out[side, 0] = np.nanmean(overall)
            out[side, 1:] = np.nanmean(per_task, axis=1)
    out[2] = out[1] - out[0]
    return out


def render(result: dict[str, Any]) -> str:
    a, b = result["a"]["editor"], result["b"]["editor"]
    lines = [
        f"### {result['benchmark']}: {b} (B) against {a} (A)",
        "",
        f"Judges: A `{result['a']['judge']}`, B `{result['b']['judge']}`"
        + (
            ""
            if result["same_judge"]
            else " — DIFFERENT judges: the difference is not the editors' alone"
        ),
        f"Paired units (item, seed): {result['paired_units']}; interval: paired bootstrap "
        f"over items (within task) and seeds, {result['bootstrap']['rounds']} rounds, "
        f"seed {result['bootstrap']['seed']}; * = the interval excludes 0.",
        "",
    ]
    for metric, entry in result["metrics"].items():
        lines += [f"| {metric} | A | B | B − A | 95 % interval |", "|---|---:|---:|---:|---|"]
        rows = [("**Overall**", entry["overall"]), *entry["by_task"].items()]
        for name, cell in rows:
            if cell is None:
                continue
            mark = " *" if cell["significant"] else ""
            lines.append(
                f"| {name} | {cell['a']:.2f} | {cell['b']:.2f} | {cell['diff']:+.2f}{mark} | "
                f"[{cell['ci'][0]:+.2f}, {cell['ci'][1]:+.2f}] |"
            )
        lines.append("")
    return "\n".join(lines)
