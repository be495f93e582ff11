"""The acceptance criteria of the quickstart, measured on the real quickstart config.

One full quickstart run (about 20 s here) is shared by these tests.
"""

import json
import re

import pytest
import yaml

import nhr
from conftest import QUICKSTART
from helpers import dataset_rows, table_rows
from nhr.analysis.estimate import compute_estimate
from nhr.analysis.report import build_report
from nhr.backends.sim import SUPPORTED_OPERATIONS
from nhr.backends.sim.truth import label_candidate
from nhr.config import load_config
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


def test_survival_rates_are_near_the_reference(quickstart):
    _, _, summary = quickstart
    change = {row["step"]: row["change"] for row in summary["survival"]}
    assert -0.70 < change["plausibility gate"] < -0.40  # reference -56 %
    assert -0.70 < change["pre-filter (VLM)"] < -0.40  # reference -57 %
    assert -0.75 < change["validator"] < -0.50  # reference -63 %
    assert -0.45 < change["best-of selection"] < -0.15  # reference -31 %
    assert 0.85 < change["inversion"] < 1.0  # reference +95 %


def test_knee_midpoint_is_sensible_on_the_quickstart(quickstart):
    _, _, summary = quickstart
    suggested = summary["survival_curve"]["suggested_threshold"]
    assert suggested is not None and 4.3 <= suggested <= 5.0


def test_estimate_from_half_the_prompts_is_within_15_percent(quickstart, tmp_path):
    _, full, _ = quickstart
    config = load_config(QUICKSTART, {"run.prompts": 72})
    half = nhr.mine(config, tmp_path / "half").stats
    estimate = compute_estimate(half, config, full["dataset"]["rows"])
    actual = {s["stage"]: s["model_calls"] for s in full["stages"]}
    assert {s["stage"] for s in estimate["stages"]} == {k for k, v in actual.items() if v}
    for stage in estimate["stages"]:
        error = stage["expected_calls"] / actual[stage["stage"]] - 1
        assert abs(error) <= 0.15, (stage["stage"], error)


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
    assert sum(verdicts["phantom"]) / len(verdicts["phantom"]) >= 0.80
    assert sum(verdicts["correct"]) / len(verdicts["correct"]) <= 0.05
    stats = json.loads((run_dir / "report" / "stats.json").read_text())
    backward = next(s for s in stats["stages"] if s["stage"] == "backward")
    assert backward["dropped"]["forward_backward_inconsistent"] >= 0.8 * len(verdicts["phantom"])
