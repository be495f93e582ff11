"""`nhr report`: survival table, curve, estimate, categories and an HTML gallery that escapes
every model-written string and opens in a headless browser without script errors."""

import json
import shutil
import subprocess

import pytest

from nhr.analysis.report import build_report
from nhr.store import RunStore


@pytest.fixture(scope="module")
def report(mined):
    run_dir, _ = mined
    return run_dir, build_report(run_dir, target=10_000)


def test_report_files_and_survival_table(report):
    run_dir, summary = report
    out = run_dir / "report"
    for name in (
        "stats.json",
        "survival.json",
        "survival.md",
        "survival_curve.json",
        "survival_curve.png",
        "estimate.json",
        "categories.json",
        "report.md",
        "index.html",
    ):
        assert (out / name).exists(), name
    steps = [row["step"] for row in summary["survival"]]
    assert steps[:3] == ["generate", "plausibility gate", "edit attempts"]
    assert "backward-consistency filter" in steps and steps[-1] == "released"
    gate = summary["survival"][1]
    assert gate["reference_change"] == -0.56 and -1 < gate["change"] < 0
    assert summary["released"] == summary["survival"][-1]["remaining"]
    assert summary["released_per_forward"] > 0
    table = (out / "survival.md").read_text()
    assert "| plausibility gate |" in table and "-56.0%" in table
    assert summary["complete"] is True


def test_estimate_scales_calls_with_the_target(report):
    _, summary = report
    estimate = summary["estimate"]
    released = estimate["measured_released"]
    edit = next(s for s in estimate["stages"] if s["stage"] == "edit")
    assert edit["expected_calls"] == pytest.approx(edit["calls_per_released"] * 10_000, rel=1e-3)
    assert estimate["prompts_needed"] == pytest.approx(16 * 10_000 / released, rel=0.01)


def test_survival_curve_is_monotone(report):
    run_dir, _ = report
    curve = json.loads((run_dir / "report" / "survival_curve.json").read_text())
    survival = curve["survival"]
    assert survival[0] == 1.0 and all(a >= b for a, b in zip(survival, survival[1:]))
    assert curve["pool"] > 0


def test_categories_count_attempts_and_releases(report):
    _, summary = report
    total_attempts = sum(c["attempts"] for c in summary["categories"])
    assert total_attempts > 0
    assert all(c["forward"] <= c["pairs"] for c in summary["categories"])


@pytest.fixture(scope="module")
def hostile_run(mined, tmp_path_factory):
    """A copy of the run where the designer 'wrote' markup into an instruction."""
    run_dir, _ = mined
    copy = tmp_path_factory.mktemp("hostile") / "run"
    shutil.copytree(run_dir, copy)
    store = RunStore(copy)
    from nhr import records
    from nhr.config import parse_config
    from nhr.pipeline import release_stage

    release = release_stage(parse_config(store.read_config()))
    altered = 0
    for shard in store.done_shards(release):
        rows = store.read_rows(release, shard)
        for row in rows:
            if row["status"] == "ok":
                row["instruction"] = '<script>document.title="pwned"</script><b>bold</b> & more'
                altered += 1
        store.write_rows(release, shard, rows, records.TRIPLET)
    assert altered, "no released triplet to alter"
    build_report(copy)
    return copy


def test_model_strings_are_escaped(hostile_run):
    page = (hostile_run / "report" / "index.html").read_text()
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    assert "<b>bold</b>" not in page


def test_gallery_opens_in_headless_chromium(hostile_run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    page = hostile_run / "report" / "index.html"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={hostile_run / 'chrome-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=2000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<h1>nhr run report</h1>" in dom
    assert '&lt;script&gt;document.title="pwned"&lt;/script&gt;' in dom  # shown as text
    assert "<title>nhr report</title>" in dom  # the injected script never ran
    console_errors = [
        line
        for line in done.stderr.splitlines()
        if "Uncaught" in line or ("CONSOLE" in line and "ERROR" in line)
    ]
    assert not console_errors
    images = dom.count("<img ")
    assert images >= 2


def test_report_on_a_run_still_in_progress(report, tmp_path):
    run_dir, finished = report
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "stages" / "export")
    shutil.rmtree(copy / "dataset")
    # a shard mid-validation: one that validated something, so the pool must shrink
    markers = (copy / "stages" / "validate").glob("shard-*.done.json")
    max(markers, key=lambda marker: json.loads(marker.read_text())["rows"]).unlink()
    summary = build_report(copy)
    assert summary["complete"] is False and summary["released"] is None
    assert "still mining" in (copy / "report" / "report.md").read_text()
    assert "still mining" in (copy / "report" / "index.html").read_text()
    full = finished["survival_curve"]["pool"]
    assert 0 < summary["survival_curve"]["pool"] < full  # only finished shards are read
