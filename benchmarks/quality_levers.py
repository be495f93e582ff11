"""Quality levers: released forward precision against the simulator's truth, per lever setting.

Mines the quickstart world (configs/quickstart.yaml: realistic judges, docs/simulator.md) once,
then re-runs it per lever setting. Settings that only change the judging (`validate.samples`,
`validate.aggregate`, `validate.second_judge`, `validate.second_judge_rule`, `select.best_of`,
thresholds) re-run from the validate stage: everything before it (designs, sources, edits,
pre-filter) is the same, so the editor calls are too, and a setting can only change which
candidates are released. Settings that change which sources are edited or how often
(`plausibility.samples`, `plausibility.reject`, `schedule.policy: adaptive`, "early stop")
re-mine from the gate. Per setting:

- released: forward triplets in the released set (after the backward-consistency filter);
- precision: the share of them that are truly correct (the simulator's ground truth, as in
  benchmarks/sim_precision.py); `select`: the same share right after best-of selection,
  before the backward filter; below each row, why the wrong ones are wrong (truth.py's
  error kinds: `source_defect` is a defect inherited from the source image);
- editor calls per released forward triplet (the cost that matters: an edit is the expensive
  call); a setting that releases fewer triplets spends more per triplet;
- judge calls per released forward triplet: the validate and select stages' calls (the
  validator's and the second judge's: the levers' own cost; the pre-filter's and the backward
  filter's are left out), and the gate's calls apart (`gate/rel`).

A setting whose threshold is `matched` is run at the highest threshold (found by bisection on
a 0.02 grid from 4.20 to 4.90) at which it spends no more editor calls per released forward
triplet than the reference: the lever's precision at the reference's editor cost.

Every setting, the reference included, runs in a world where the gate model's misses have a
part common to every gate model on the image (`gate_shared` 0.4, the judges' `shared`), so
sampling the gate again finds only some of what one look missed (docs/simulator.md); with a
single greedy gate this changes which sources pass, not how many.

Settings marked `*` also change an assumption of the simulator (that comparing two edits is
sharper than scoring each, docs/simulator.md): they show what a gain would rest on and are not
candidates for the best setting.

Last lines: what a perfect chooser among the reference's passing candidates would reach at
selection (no best-of rule can do better), then the best setting (highest precision among
those spending no more editor calls per released triplet than the reference, the paper's
pipeline) against the reference.

    python benchmarks/quality_levers.py [--prompts N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import quickstart, stage_rows

import nhr
from nhr.backends.sim.truth import label_candidate
from nhr.config import parse_config
from nhr.pipeline import release_stage
from nhr.store import ImageStore

# A second judge for validate.second_judge: another fine-tuned judge with the tuned profile's
# error statistics (its own errors are its own: only the profile's `shared` part is common).
SECOND_TUNED = {
    "backend": "sim",
    "model": "sim-second-validator",
    "judge": "tuned-gemini-2.0-flash",
}
SECOND_PRO = {"backend": "sim", "model": "sim-gemini-pro", "judge": "gemini-2.5-pro"}
# By default the simulator's judge compares two edits exactly as well as it scores each alone
# (docs/simulator.md); this is the optimistic assumption that comparing is sharper: half the
# score error, and a flaw the other edit lacks missed half as often.
SHARPER = {"validator": {"judge_params": {"pairwise_noise": 0.5, "pairwise_blind_spots": 0.5}}}
PAIRWISE = {"select": {"best_of": "pairwise"}}
# Source-side levers: look at each source 3 times (sampled), fail it on any clear no.
GATE3 = {"plausibility": {"samples": 3}}
GATE5 = {"plausibility": {"samples": 5}}
EARLY_STOP = {"schedule": {"policy": "adaptive"}}  # a pair stops at its first pass
MEAN = {"second_judge": True, "second_judge_rule": "mean"}  # the two judges' mean must pass
MATCHED = "matched"  # the highest threshold spending no more editor calls than the reference
GRID = [round(4.20 + 0.02 * step, 2) for step in range(36)]  # 4.20 ... 4.90
# Every setting's world: the gate models' misses share this part per image (as the judges'
# `shared`), so looking again, or with another model, finds only some of what one look
# missed; with a single greedy gate the gate's statistics are the quickstart's.
GATE_SHARED = 0.4
# The setting the README recommends (all levers but early stop, which costs best-of its choice)
RECOMMENDED = "gate 5 + pairwise + second judge mean, samples 3 (tuned), adherence T 4.8, matched T"
# Sections whose change alters the edits: a setting that changes them re-mines from the gate.
UPSTREAM = ("plausibility", "schedule")

# name -> (section overrides, models overrides); the first is the reference (the paper's rule).
# Settings marked `*` change an assumption of the simulator (SHARPER), not only nhr's settings:
# they show what a gain rests on and are left out of the best setting.
SETTINGS: dict[str, tuple[dict, dict]] = {
    "reference (T 4.7, pointwise)": ({}, {}),
    "samples 5 mean": ({"validate": {"samples": 5}}, {}),
    "samples 5 mean, matched T": ({"validate": {"samples": 5, "threshold": MATCHED}}, {}),
    "second judge (tuned)": (
        {"validate": {"second_judge": True}},
        {"second_validator": SECOND_TUNED},
    ),
    "second judge (gemini-2.5-pro)": (
        {"validate": {"second_judge": True}},
        {"second_validator": SECOND_PRO},
    ),
    "pairwise": (PAIRWISE, {}),
    "pairwise, sharper comparisons *": (PAIRWISE, SHARPER),
    "pairwise + samples 5 mean, matched T": (
        {**PAIRWISE, "validate": {"samples": 5, "threshold": MATCHED}},
        {},
    ),
    "second judge mean (tuned)": ({"validate": MEAN}, {"second_validator": SECOND_TUNED}),
    "second judge mean (tuned), matched T": (
        {"validate": {**MEAN, "threshold": MATCHED}},
        {"second_validator": SECOND_TUNED},
    ),
    "adherence T 4.8, matched T": ({"validate": {"threshold": (4.8, MATCHED)}}, {}),
    "second judge mean (tuned), adherence T 4.8, matched T": (
        {"validate": {**MEAN, "threshold": (4.8, MATCHED)}},
        {"second_validator": SECOND_TUNED},
    ),
    # source-side levers: these re-mine from the gate (the edits differ); settings with the
    # same gate and schedule follow each other, so the ones after re-run from validate only
    "gate samples 3 any-no": (GATE3, {}),
    "gate samples 3 majority-no": ({"plausibility": {"samples": 3, "reject": "majority_no"}}, {}),
    "gate samples 5 any-no": (GATE5, {}),
    "gate 5 + pairwise + second judge mean (tuned), matched T": (
        {**GATE5, **PAIRWISE, "validate": {**MEAN, "threshold": MATCHED}},
        {"second_validator": SECOND_TUNED},
    ),
    "gate 5 + pairwise + second judge mean (tuned), adherence T 4.8, matched T": (
        {**GATE5, **PAIRWISE, "validate": {**MEAN, "threshold": (4.8, MATCHED)}},
        {"second_validator": SECOND_TUNED},
    ),
    RECOMMENDED: (
        {**GATE5, **PAIRWISE, "validate": {**MEAN, "samples": 3, "threshold": (4.8, MATCHED)}},
        {"second_validator": SECOND_TUNED},
    ),
    "early stop": (EARLY_STOP, {}),
    "gate 5 + early stop + second judge mean, samples 3 (tuned), adherence T 4.8, matched T": (
        {**GATE5, **EARLY_STOP, "validate": {**MEAN, "samples": 3, "threshold": (4.8, MATCHED)}},
        {"second_validator": SECOND_TUNED},
    ),
}


def as_tuple(threshold) -> tuple:
    return threshold if isinstance(threshold, tuple) else (threshold,)


def setting_config(base: dict, sections: dict, models: dict) -> dict:
    config = copy.deepcopy(base)
    for name, values in sections.items():
        values = dict(values)
        threshold = values.pop("threshold", None)
        if threshold is not None:
            adherence, aesthetics = threshold if isinstance(threshold, tuple) else (threshold,) * 2
            values.update(adherence_threshold=adherence, aesthetics_threshold=aesthetics)
        config.setdefault(name, {}).update(values)
    for role, entry in models.items():
        config["models"][role] = {**config["models"].get(role, {}), **entry}
    return config


def measure(run_dir: Path, result, labels: dict) -> dict:
    """Precision and costs of one finished run (the labels cache is shared across settings)."""
    images = ImageStore(run_dir / "images")
    config = parse_config(result_config(run_dir))

    def errors(rows: list[dict]) -> list[str | None]:
        """Per row, why it is wrong (truth.CANDIDATE_ERRORS), or None when it is correct."""
        found = []
        for row in rows:
            key = (row["source_image"], row["edited_image"], row["instruction"])
            if key not in labels:
                labels[key] = label_candidate(
                    images.get(row["source_image"]),
                    images.get(row["edited_image"]),
                    row["instruction"],
                ).error
            found.append(labels[key])
        return found

    def correct(rows: list[dict]) -> int:
        return sum(error is None for error in errors(rows))

    def forward(stage: str) -> list[dict]:
        rows = stage_rows(run_dir, stage)
        return [r for r in rows if r["status"] == "ok" and r["kind"] == "forward"]

    released, selected = forward(release_stage(config)), forward("select")
    calls = {stage["stage"]: stage["model_calls"] for stage in result.stats["stages"]}
    count = max(1, len(released))
    return {
        "released": len(released),
        "precision": correct(released) / count,
        "wrong": Counter(error for error in errors(released) if error is not None),
        "select": correct(selected) / max(1, len(selected)),
        "editor": calls.get("edit", 0) / count,
        "judge": (calls.get("validate", 0) + calls.get("select", 0)) / count,
        "gate": calls.get("plausibility", 0) / count,
    }


def oracle_at_selection(run_dir: Path) -> tuple[float, float]:
    """(precision of the reference's selection, of a perfect chooser): a group is released
    correct by a perfect chooser when any of its passing candidates is correct."""
    images = ImageStore(run_dir / "images")
    edits = {c["candidate_id"]: c for c in stage_rows(run_dir, "edit")}
    passing = [r["candidate_id"] for r in stage_rows(run_dir, "validate") if r["status"] == "ok"]
    groups: dict[tuple[str, str], list[bool]] = {}
    for candidate_id in passing:
        c = edits[candidate_id]
        truth = label_candidate(
            images.get(c["source_image"]), images.get(c["edited_image"]), c["instruction"]
        )
        groups.setdefault((c["source_id"], c["edit_id"]), []).append(truth.correct)
    selected = [r for r in stage_rows(run_dir, "select") if r["status"] == "ok"]
    chosen = sum(
        label_candidate(
            images.get(r["source_image"]), images.get(r["edited_image"]), r["instruction"]
        ).correct
        for r in selected
    )
    count = max(1, len(groups))
    return chosen / max(1, len(selected)), sum(any(g) for g in groups.values()) / count


def result_config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


class Runner:
    """Mines the world once, then each setting from the validate stage on."""

    def __init__(self, base: dict) -> None:
        self.base = base
        self.run_dir = Path(tempfile.mkdtemp(prefix="nhr-levers-")) / "run"
        self.labels: dict = {}
        self.upstream: tuple | None = None  # the edits on disk: mined with these settings

    def run(self, sections: dict, models: dict) -> dict:
        upstream = tuple(repr(sections.get(name)) for name in UPSTREAM)
        if self.upstream is None:
            redo_from = None
        elif upstream != self.upstream or "schedule" in sections:
            # other edits (adaptive rounds depend on the validator too): re-mine from the gate
            redo_from = "plausibility"
        else:
            redo_from = "validate"  # the same edits as the run before
        result = nhr.mine(
            setting_config(self.base, sections, models),
            self.run_dir,
            redo_from=redo_from,
            preflight=False,
        )
        self.upstream = upstream
        return measure(self.run_dir, result, self.labels)

    def matched(self, sections: dict, models: dict, editor: float) -> tuple[float, dict]:
        """The highest threshold on GRID spending at most `editor` editor calls per released
        forward triplet (by bisection; a lower threshold releases more of the same edits)."""

        given = sections["validate"]["threshold"]

        def at(threshold: float) -> dict:
            # (adherence, MATCHED): the aesthetics threshold is matched, adherence stays
            pair = (given[0], threshold) if isinstance(given, tuple) else threshold
            validate = {**sections["validate"], "threshold": pair}
            return self.run({**sections, "validate": validate}, models)

        low, high = 0, len(GRID)  # GRID[low] is taken to be affordable, GRID[high] not
        best = None
        while high - low > 1:
            middle = (low + high) // 2
            row = at(GRID[middle])
            if row["editor"] <= editor + 1e-9:
                low, best = middle, row
            else:
                high = middle
        return GRID[low], best if best is not None else at(GRID[low])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="default: the quickstart's")
    parser.add_argument("--only", nargs="*", help="names of settings to run (the reference always)")
    args = parser.parse_args()
    base = quickstart()
    base["models"]["gate"]["gate_shared"] = GATE_SHARED
    if args.prompts:
        base["run"]["prompts"] = args.prompts
    names = list(SETTINGS)
    if args.only:
        names = [names[0]] + [n for n in names[1:] if n in args.only]
    runner = Runner(base)
    rows = []
    header = f"{'setting':<48}{'released':>9}{'precision':>10}{'select':>8}"
    print(header + f"{'editor/rel':>11}{'judge/rel':>10}{'gate/rel':>9}")
    for name in names:
        sections, models = SETTINGS[name]
        started = time.perf_counter()
        if MATCHED in as_tuple(sections.get("validate", {}).get("threshold")):
            threshold, row = runner.matched(sections, models, rows[0]["editor"])
            name = name.replace("matched T", f"matched T {threshold:.2f}")
        else:
            row = runner.run(sections, models)
        row["name"] = name
        rows.append(row)
        print(
            f"{name:<48}{row['released']:>9}{row['precision']:>10.3f}{row['select']:>8.3f}"
            f"{row['editor']:>11.2f}{row['judge']:>10.2f}{row['gate']:>9.2f}   "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        wrong = ", ".join(f"{kind} {n}" for kind, n in row["wrong"].most_common())
        print(f"    wrong released: {wrong or 'none'}", flush=True)
        if len(rows) == 1:
            reference_choice = oracle_at_selection(runner.run_dir)
    reference = rows[0]
    print(
        f"at selection, the reference's passing candidates: best-of chose {reference_choice[0]:.3f} "
        f"correct, a perfect chooser would choose {reference_choice[1]:.3f}"
    )
    affordable = [
        r for r in rows if r["editor"] <= reference["editor"] + 1e-9 and not r["name"].endswith("*")
    ]
    best = max(affordable, key=lambda r: (r["precision"], -r["editor"]))
    print(f"best setting: {best['name']}")
    print(
        f"best: precision {best['precision']:.3f} editor_calls_per_released {best['editor']:.2f} "
        f"(reference: precision {reference['precision']:.3f} editor_calls_per_released "
        f"{reference['editor']:.2f})"
    )


if __name__ == "__main__":
    main()
