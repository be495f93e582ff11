"""`nhr report`: survival table, curve, estimate, categories and an HTML gallery that escapes
every model-written string and opens in a headless browser without script errors."""

import html
import json
import os
import re
import shutil
import subprocess
import time

import pytest
from PIL import Image

from helpers import CHROMIUM_FLAGS, dataset_rows
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
    # model-written text on the rejected side too: every edit instruction and failure reason
    for stage in ("edit", "invert"):
        for shard in store.done_shards(stage):
            rows = store.read_rows(stage, shard)
            for row in rows:
                row["instruction"] = '<img src=x onerror="document.title=1">edit'
                if row["status"] == "failed":
                    row["reason"] = "<i>refused</i>"
            schema = records.CANDIDATE if stage == "edit" else records.TRIPLET
            store.write_rows(stage, shard, rows, schema)
    build_report(copy)
    return copy


def test_model_strings_are_escaped(hostile_run):
    page = (hostile_run / "report" / "index.html").read_text()
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    assert "<b>bold</b>" not in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=" in page
    assert "<i>refused</i>" not in page


def test_gallery_opens_in_headless_chromium(hostile_run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    page = hostile_run / "report" / "index.html"
    done = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            "--disable-quic",
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
    for section in ("run", "survival", "curve", "estimate", "categories", "reasons", "rejected"):
        assert f'id="{section}"' in dom, section
    # the configured config is on the page, folded
    assert "<details><summary>Config</summary>" in dom
    assert "low-level check" in dom or "VLM pre-filter" in dom
    # and it renders: a screenshot of the top of the page (header, tables, the S(T) plot)
    shot = hostile_run / "report-top.png"
    drawn = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={hostile_run / 'chrome-profile'}",
            "--hide-scrollbars",
            "--window-size=1280,1600",
            "--virtual-time-budget=2000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert drawn.returncode == 0 and shot.exists(), drawn.stderr[-2000:]
    with Image.open(shot) as image:
        grey = image.convert("L")
        assert grey.size == (1280, 1600)
        dark = sum(count for level, count in enumerate(grey.histogram()) if level < 128)
        assert dark > 0.01 * 1280 * 1600  # text, tables and the plot, not a blank page


def test_page_shows_what_the_report_computes(report):
    run_dir, summary = report
    page = (run_dir / "report" / "index.html").read_text()
    header = summary["header"]
    assert f"nhr {header['nhr_version']}" in page and f"seed {header['seed']}" in page
    for role, name in header["models"].items():
        assert f"<td>{role}</td><td>{name}</td>" in page
    assert "Compute estimate for 10,000 released triplets" in page
    edit = next(s for s in summary["estimate"]["stages"] if s["stage"] == "edit")
    assert f"{edit['expected_calls']:,}" in page
    # readable category labels, composites as "A & B", single operations first
    labels = [c["category"] for c in summary["categories"]]
    composites = [c for c in summary["categories"] if c["composite"]]
    assert composites and all(" &amp; " in html.escape(c["category"]) for c in composites)
    assert not any("_" in label for label in labels)
    assert [c["composite"] for c in summary["categories"]] == sorted(
        c["composite"] for c in summary["categories"]
    )
    assert html.escape(composites[0]["category"]) in page
    # every stage's drop and failure reasons with counts, from the stage statistics
    stats = json.loads((run_dir / "report" / "stats.json").read_text())
    expected = {
        (stage["stage"], reason, count)
        for stage in stats["stages"]
        for outcome in ("dropped", "failed")
        for reason, count in stage[outcome].items()
        if count
    }
    assert {(r["stage"], r["reason"], r["count"]) for r in summary["reasons"]} == expected
    for stage, reason, _count in expected:
        assert f"<td>{stage}</td>" in page and f"<td>{reason}</td>" in page
    # the yield of the suggested threshold against the configured one
    curve = summary["survival_curve"]
    if curve["suggested_threshold"] is not None:
        assert 'id="yield-cost"' in page and f"{curve['configured_share']:.1%}" in page


def test_rejected_examples_cover_every_rejecting_stage(report):
    run_dir, summary = report
    page = (run_dir / "report" / "index.html").read_text()
    # design's drops (unusable items, duplicate prompts, items past run.prompts) have no
    # image to show: they are counted in the reasons table only
    rejecting = {r["stage"] for r in summary["reasons"]} - {"design"}
    assert {"plausibility", "prefilter", "validate"} <= rejecting
    assert "over_target" in page  # the reasons table names design's surplus items
    for stage in rejecting:
        assert f'id="rejected-{stage}"' in page, stage
    section = page[page.index('id="rejected"') :]
    # select's pairs where nothing passed, and its best-of losers, which no table keeps as rows
    assert 'id="rejected-select"' in section and "no_candidate_passed" in section
    if ("select", "not_best") in {(r["stage"], r["reason"]) for r in summary["reasons"]}:
        assert "rejected: not_best" in section
    assert "adherence None" not in page
    if "rejected: no_op" in section:  # a no-op shows why, not empty scores
        assert "no-op: the edit changed no pixel" in section
    # cards carry the sample id: the released ids shown are ids of the dataset
    shown = set(re.findall(r'<p class="meta id">id ([0-9a-f]+)</p>', page))
    released = {row["sample_id"] for row in dataset_rows(run_dir)}
    assert shown & released


def test_gallery_stays_small_with_thousands_of_triplets(mined, tmp_path):
    """A run whose release table holds thousands of triplets gets a page of the same size:
    a bounded sample per group, thumbnails, lazily loaded."""
    run_dir, _ = mined
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    store = RunStore(copy)
    from nhr import records
    from nhr.config import parse_config
    from nhr.pipeline import release_stage

    release = release_stage(parse_config(store.read_config()))
    shard = store.done_shards(release)[0]
    rows = store.read_rows(release, shard)
    ok = [r for r in rows if r["status"] == "ok"]
    many = rows + [
        {**r, "triplet_id": f"{r['triplet_id']}{n:05d}"} for n in range(4000 // len(ok)) for r in ok
    ]
    store.write_rows(release, shard, many, records.TRIPLET)
    started = time.perf_counter()
    build_report(copy)
    seconds = time.perf_counter() - started
    page = (copy / "report" / "index.html").read_text()
    images = re.findall(r"<img [^>]*>", page)
    triplet_images = [i for i in images if 'alt="survival' not in i]
    assert all('loading="lazy"' in i for i in triplet_images)
    assert len(page) < 1_000_000 and len(triplet_images) < 600
    assert all(Image.open(p).size[0] <= 192 for p in (copy / "report" / "images").glob("*.png"))
    assert seconds < 30


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
    # nobody holds the run's lock: it stopped (killed or interrupted), it is not mining
    assert summary["state"] == "stopped"
    assert "stopped before the end" in (copy / "report" / "report.md").read_text()
    page = (copy / "report" / "index.html").read_text()
    assert '<span class="state stopped">' in page and "still mining" not in page
    full = finished["survival_curve"]["pool"]
    assert 0 < summary["survival_curve"]["pool"] < full  # only finished shards are read
    # a live miner holding the lock makes it "mining"
    (copy / ".lock").write_text(json.dumps({"pid": os.getpid()}))
    assert build_report(copy)["state"] == "mining"
    assert '<span class="state mining">' in (copy / "report" / "index.html").read_text()


def test_yield_cost_of_the_suggested_threshold():
    from nhr.analysis.report import yield_sentence

    curve = {
        "suggested_threshold": 4.9,
        "suggested_share": 0.077,
        "configured_thresholds": [4.7, 4.7],
        "configured_share": 0.376,
    }
    text = yield_sentence(curve)
    assert "4.90 keeps 7.7%" in text and "configured 4.7 keeps 37.6%" in text
    assert "-79.5%" in text and "fewer, stricter" in text
    same = yield_sentence({**curve, "suggested_threshold": 4.7, "suggested_share": 0.376})
    assert "Same yield" in same
    assert yield_sentence({**curve, "suggested_threshold": None}) is None


def test_unknown_and_extra_stages_are_reported_not_refused():
    """Stages come from the run: a stage this version does not know (a new source, a second
    judge, an edit round) shows its rejections and reasons like any other."""
    from nhr.analysis.rejections import collect_rejections
    from nhr.analysis.report import stage_reasons

    tables = {
        "describe": [
            {"source_id": "s1", "prompt_id": "p1", "image": "img1", "status": "ok"},
            {
                "source_id": "s2",
                "prompt_id": "p1",
                "image": "img2",
                "status": "failed",
                "reason": "<b>caption refused</b>",
                "confidence": 0.2,
            },
        ],
        "edit@2": [
            {
                "candidate_id": "c1",
                "source_id": "s1",
                "edit_id": "e1",
                "edited_image": "x",
                "instruction": "do it",
                "status": "ok",
            },
        ],
        "judge_two": [
            {
                "candidate_id": "c1",
                "adherence": 3.1,
                "aesthetics": 4.0,
                "status": "dropped",
                "reason": "second_judge_disagrees",
            },
        ],
    }
    found = collect_rejections(list(tables), tables.__getitem__)
    assert list(found.by_stage) == ["describe", "judge_two"]
    assert found.by_stage["judge_two"][0]["reason"] == "second_judge_disagrees"
    assert found.candidates["c1"]["edited_image"] == "x" and found.sources["s2"]["image"] == "img2"
    stats = {
        "stages": [
            {"stage": "describe", "rows_in": 2, "dropped": {}, "failed": {"refusal": 1}},
            {"stage": "judge_two", "rows_in": 1, "dropped": {"second_judge_disagrees": 1}},
        ]
    }
    reasons = stage_reasons(stats)
    assert [(r["stage"], r["reason"], r["count"]) for r in reasons] == [
        ("describe", "refusal", 1),
        ("judge_two", "second_judge_disagrees", 1),
    ]
    assert reasons[1]["meaning"] == "second_judge_disagrees"  # unknown: shown as it is
