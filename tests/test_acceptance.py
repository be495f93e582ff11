"""The acceptance criteria of the quickstart, measured on the real quickstart config.

One full quickstart run (about 30 s here) is shared by these tests. Its judges are the
simulator's realistic profiles (docs/simulator.md), so the figures are the reference run's
(docs/method.md §5, the paper's Table 2), measured against the simulator's ground truth.
"""

import json
import re

import pytest
import yaml

import nhr
from conftest import QUICKSTART
from helpers import dataset_rows, finish, kill_at_write, signature, table_rows
from nhr.analysis.estimate import compute_estimate
from nhr.analysis.report import build_report
from nhr.backends.sim import SUPPORTED_OPERATIONS
from nhr.backends.sim.truth import AUDIT_KIND, label_candidate, true_scores
from nhr.config import load_config
from nhr.pipeline import release_stage
from nhr.store import ImageStore

BANNED = re.compile(r"\b(revert|undo|restore|back)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quickstart")
    result = nhr.mine(str(QUICKSTART), run_dir)
    return run_dir, result.stats, build_report(run_dir)


def test_quickstart_mines_200_forward_triplets_covering_every_operation(quickstart):
    run_dir, stats, _ = quickstart
    rows = dataset_rows(run_dir)
    forward = [r for r in rows if r["kind"] == "forward"]
    assert len(forward) >= 200
    assert {r["operation"] for r in forward} == set(SUPPORTED_OPERATIONS)
    assert stats["complete"]


def test_the_readme_quotes_the_quickstarts_real_count(quickstart):
    """The README's opening promise ("N triplets from 144 prompts") is this run's count."""
    run_dir, _, _ = quickstart
    readme = (QUICKSTART.parents[1] / "README.md").read_text()
    said = re.search(r"([\d,]+) triplets from ([\d,]+) prompts", readme)
    assert said, "the README does not say what the quickstart mines"
    assert int(said.group(2).replace(",", "")) == load_config(QUICKSTART).run.prompts
    assert int(said.group(1).replace(",", "")) == len(dataset_rows(run_dir))


def test_every_surviving_forward_has_its_inverse_and_composites_exist(quickstart):
    run_dir, _, _ = quickstart
    rows = dataset_rows(run_dir)
    forward_ids = {r["sample_id"] for r in rows if r["kind"] == "forward"}
    inverse_parents = {r["parents"][0] for r in rows if r["kind"] == "inverse"}
    # an inverse may be missing only where the inverter failed on it, and then it is recorded
    failed = {
        r["parents"][0]
        for r in table_rows(run_dir, "invert")
        if r["kind"] == "inverse" and r["status"] == "failed"
    }
    assert forward_ids - failed <= inverse_parents
    assert inverse_parents <= forward_ids
    assert sum(r["kind"] == "composite" for r in rows) > 0
    for row in rows:
        if row["kind"] == "inverse":
            assert not BANNED.search(row["edit_instruction"]), row["edit_instruction"]


def test_released_per_forward_ratio_is_at_least_two(quickstart):
    run_dir, _, summary = quickstart
    assert summary["released_per_forward"] >= 2.0
    assert "Released / forward triplets" in (run_dir / "report" / "report.md").read_text()


REFERENCE_CHANGE = {  # the paper's Table 2 (docs/method.md §5)
    "plausibility gate": -0.560,
    "pre-filter (VLM)": -0.570,
    "low-level check": -0.030,
    "validator": -0.632,
    "best-of selection": -0.310,
    "inversion": 0.949,
    "backward-consistency filter": -0.131,
    "composition": 0.307,
}


def test_every_survival_step_is_within_5_points_of_the_reference(quickstart):
    _, _, summary = quickstart
    change = {row["step"]: row["change"] for row in summary["survival"]}
    for step, reference in REFERENCE_CHANGE.items():
        assert abs(change[step] - reference) <= 0.05, (step, change[step], reference)


def test_survival_curve_has_the_reference_knees_and_the_knee_rule_gives_4_7(quickstart):
    _, _, summary = quickstart
    curve = summary["survival_curve"]
    first, second = sorted(float(k) for k in curve["knees"])
    assert abs(first - 4.5) <= 0.1 and abs(second - 4.9) <= 0.1  # reference 4.5 and 4.9
    assert abs(curve["suggested_threshold"] - 4.7) <= 0.1 + 1e-9


def test_released_triplets_are_defective_like_the_papers_audit(quickstart):
    """About 14 % of the reference release was found defective by a human audit, spread over
    source defects, difficult removals, target-region errors and minor inpainting."""
    run_dir, _, _ = quickstart
    images = ImageStore(run_dir / "images")
    released = release_stage(load_config(QUICKSTART))
    rows = [r for r in table_rows(run_dir, released) if r["status"] == "ok"]
    assert len(rows) == len(dataset_rows(run_dir))
    kinds = []
    for row in rows:
        label = _label(images, row)
        if not label.correct:
            kinds.append(AUDIT_KIND[label.error])
    assert 0.10 <= len(kinds) / len(rows) <= 0.18
    shares = {kind: kinds.count(kind) / len(kinds) for kind in set(kinds)}
    assert max(shares.values()) <= 0.5  # not all of one kind
    assert sum(share >= 0.1 for share in shares.values()) >= 3

    # the filters earn their keep: the validator raises the share of correct candidates
    # the pre-filter left, and near-misses are common among the edit attempts
    edits = {r["candidate_id"]: r for r in table_rows(run_dir, "edit") if r["status"] == "ok"}

    def correct_share(stage):
        kept = [r["candidate_id"] for r in table_rows(run_dir, stage) if r["status"] == "ok"]
        return sum(_label(images, edits[i]).correct for i in kept) / len(kept)

    assert correct_share("validate") >= correct_share("prefilter") + 0.08
    attempts = list(edits.values())[::4]
    near = [4.0 <= min(true_scores(*_triplet(images, c))) < 4.7 for c in attempts]
    assert sum(near) / len(near) >= 0.2


def _triplet(images, row):
    return images.get(row["source_image"]), images.get(row["edited_image"]), row["instruction"]


def _label(images, row):
    return label_candidate(*_triplet(images, row))


def test_estimate_from_half_the_prompts_is_within_15_percent(quickstart, tmp_path):
    _, full, _ = quickstart
    config = load_config(QUICKSTART, {"run.prompts": 72})
    half = nhr.mine(config, tmp_path / "half").stats
    estimate = compute_estimate(half, config, full["dataset"]["rows"])
    actual = {s["stage"]: s["model_calls"] for s in full["stages"]}
    assert {s["stage"] for s in estimate["stages"]} == {k for k, v in actual.items() if v}
    for stage in estimate["stages"]:
        error = stage["expected_calls"] / actual[stage["stage"]] - 1
        # with realistic judges a few hundred calls (composition re-validates ~200
        # composites here) vary by more between two samples of prompts
        tolerance = 0.15 if actual[stage["stage"]] >= 500 else 0.3
        assert abs(error) <= tolerance, (stage["stage"], error)


def phantom_heavy_config(tmp_path):
    """Removals only, a generator that often leaves objects out and a gate that rarely
    notices: many forward triplets "remove" objects that were never there."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["run"]["prompts"] = 64
    data["brief"]["operations"] = ["remove_object"]
    data["models"]["generator"]["generator_errors"] = {"missing_object": 0.5}
    data["models"]["gate"]["defect_detection"] = 0.2
    path = tmp_path / "phantoms.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_backward_filter_catches_phantom_removals_and_spares_correct_edits(tmp_path):
    run_dir = tmp_path / "run"
    nhr.mine(str(phantom_heavy_config(tmp_path)), run_dir)
    images = ImageStore(run_dir / "images")
    verdicts = {"phantom": [], "correct": []}
    for row in table_rows(run_dir, "backward"):
        if row["kind"] != "forward" or row["edited_image"] is None:
            continue  # pairs where no candidate passed the validator
        truth = label_candidate(
            images.get(row["source_image"]), images.get(row["edited_image"]), row["instruction"]
        )
        kind = "correct" if truth.correct else truth.error
        if kind in verdicts:
            verdicts[kind].append(row["status"] == "dropped")
    assert len(verdicts["phantom"]) >= 15, "the config should produce phantom removals"
    caught = sum(verdicts["phantom"]) / len(verdicts["phantom"])
    collateral = sum(verdicts["correct"]) / len(verdicts["correct"])
    assert caught >= 0.80
    # the collateral of realistic judges and inverters: a correct forward whose inverse
    # instruction came out wrong twice, or whose inverse the validator misread (~12 % here)
    assert collateral <= 0.18 and caught >= 5 * collateral
    stats = json.loads((run_dir / "report" / "stats.json").read_text())
    backward = next(s for s in stats["stages"] if s["stage"] == "backward")
    assert backward["dropped"]["forward_backward_inconsistent"] >= 0.8 * len(verdicts["phantom"])


def test_growing_the_quickstart_from_48_prompts_gives_the_one_go_dataset(quickstart, tmp_path):
    """48 -> 144 prompts, killed while growing and resumed: the dataset of the 144-prompt
    quickstart mined in one go, row for row."""
    one_go, _, _ = quickstart
    grown = tmp_path / "grown"
    nhr.mine(load_config(QUICKSTART, {"run.prompts": 48}), grown, preflight=False)
    kill_at_write(QUICKSTART, grown, "stages/edit/shard-00010", 1)
    finish(QUICKSTART, grown)
    assert signature(grown) == signature(one_go)
