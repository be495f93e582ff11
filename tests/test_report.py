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
    # the gallery: forward triplets, then inverses, then composites
    gallery = page[page.index('id="released"') :]
    kinds = re.findall(r"<h3>(forward|inverse|composite) · ", gallery)
    assert kinds and kinds == sorted(kinds, key=["forward", "inverse", "composite"].index)
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
        assert "dropped: not_best" in section
    assert "adherence None" not in page
    if "dropped: no_op" in section:  # a no-op shows why, not empty scores
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
    # the badge says the state once, the words go on after it
    assert '<span class="state stopped">stopped</span> before the end; run' in page
    full = finished["survival_curve"]["pool"]
    assert 0 < summary["survival_curve"]["pool"] < full  # only finished shards are read
    # a live miner holding the lock makes it "mining"
    (copy / ".lock").write_text(json.dumps({"pid": os.getpid()}))
    assert build_report(copy)["state"] == "mining"
    page = (copy / "report" / "index.html").read_text()
    assert f'<span class="state mining">mining</span> (pid {os.getpid()})' in page


def test_report_before_the_validator_ran(report, tmp_path):
    """A run stopped while editing: the stages it did not reach say so instead of counting 0,
    no operation has a pass rate, and S(T) of an empty pool is not drawn."""
    run_dir, _ = report
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)  # with the finished run's report, plot and thumbnails
    shutil.rmtree(copy / "stages" / "export")
    shutil.rmtree(copy / "dataset")
    for stage in ("prefilter", "validate", "select", "invert", "backward", "compose"):
        for marker in (copy / "stages" / stage).glob("shard-*.done.json"):
            marker.unlink()
    summary = build_report(copy)
    reached = {row["step"]: row["reached"] for row in summary["survival"]}
    assert reached["edit attempts"] and not reached["validator"]
    assert not any(reached[step] for step in ("low-level check", "best-of selection"))
    page = (copy / "report" / "index.html").read_text()
    survival = page[page.index('id="survival"') : page.index('id="curve"')]
    assert "not reached yet" in survival and "<td class=n>0 candidates</td>" not in survival
    assert "| validator |  | not reached yet |" in (copy / "report" / "report.md").read_text()
    # nothing judged: no pass rate, shown as "–" rather than 0.0 %
    assert all(c["pass_rate"] is None for c in summary["categories"])
    categories = page[page.index('id="categories"') : page.index('id="reasons"')]
    assert "<td class=n>–</td>" in categories and "0.0%" not in categories
    # the stages after the editor are not reached: their counts are unknown, not 0
    for c in summary["categories"]:
        assert c["attempts"] > 0 and c["pairs"] is c["forward"] is c["released"] is None, c
    assert "<td class=n>0</td>" not in categories
    markdown = (copy / "report" / "report.md").read_text()
    table = markdown[markdown.index("## Per category") : markdown.index("## Drops")]
    assert "| – | – | – |" in table and "| 0 |" not in table
    # an empty pool: a note, no plot (the finished run's PNG is removed, not left stale)
    assert summary["survival_curve"]["pool"] == 0
    assert 'id="no-pool"' in page and "survival_curve.png" not in page
    assert not (copy / "report" / "survival_curve.png").exists()


def test_knees_are_given_with_the_share_of_the_pool_they_keep(report):
    run_dir, summary = report
    curve = summary["survival_curve"]
    if curve["knees"] is None:
        pytest.skip("no cliff on this run")
    page = (run_dir / "report" / "index.html").read_text()
    for knee, share in zip(curve["knees"], curve["knee_shares"]):
        index = curve["thresholds"].index(knee)
        assert share == curve["survival"][index]
    first, second = curve["knee_shares"]
    assert f"S(T) keeps {first:.1%} and {second:.1%} of the validated pool" in page
    assert f"down by {1 - first:.1%} and {1 - second:.1%}" in page


def test_curve_shows_coinciding_thresholds_and_what_s_is_at_the_knees():
    """The quickstart's configured 4.7 is also the suggested threshold: both lines are drawn
    distinguishably and the legend says they coincide; each knee is labelled with S there."""
    import numpy as np

    from nhr.analysis.report import curve_figure
    from nhr.analysis.thresholds import Knees, grid

    thresholds = grid()
    curve = np.clip(1.2 - 0.2 * thresholds, 0, 1)
    curve[thresholds >= 4.5 - 1e-9] *= 0.6
    curve[thresholds >= 4.9 - 1e-9] *= 0.4
    figure = curve_figure(thresholds, curve, Knees(4.5, 4.9, -0.45, -0.62, 4.7), (4.7, 4.7))
    axis = figure.axes[0]
    lines = {line.get_label(): line for line in axis.get_lines()}
    configured = lines["configured T = 4.7"]
    suggested = lines["suggested T = 4.70 (= configured)"]
    # a wide band under a thin dashed line: the one does not hide the other
    assert configured.get_linewidth() > 2 * suggested.get_linewidth()
    assert suggested.get_linestyle() == "--" and suggested.get_zorder() > configured.get_zorder()
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert "suggested T = 4.70 (= configured)" in legend
    assert "knees (steepest falls of S)" in legend
    at = {round(float(t), 1): float(v) for t, v in zip(thresholds, curve)}
    assert [text.get_text() for text in axis.texts] == [
        f"knee 4.50\nS = {at[4.5]:.1%}",
        f"knee 4.90\nS = {at[4.9]:.1%}",
    ]


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


def test_rejected_examples_use_the_drops_table_names_and_counts(report):
    """Each stage's tally in the rejected section names its reasons as the drops table does,
    with the same counts; where its rows count something else, the tally says what."""
    run_dir, summary = report
    page = (run_dir / "report" / "index.html").read_text()
    counted = {(r["stage"], r["outcome"], r["reason"]): r["count"] for r in summary["reasons"]}
    tallies = dict(
        re.findall(r'<h3 id="rejected-([^"]+)">[^<]*</h3><p class="note tally">([^<]*)</p>', page)
    )
    assert {"prefilter", "select", "backward"} <= set(tallies)
    for stage, tally in tallies.items():
        for entry in html.unescape(tally).split("; "):
            outcome, reason, count, note = re.fullmatch(
                r"(\w+): (\S+) ([\d,]+)(.*)", entry
            ).groups()
            if note:  # told apart: what the rows are, and what the drops table counts
                assert re.match(
                    r" (attempts|pairs) \((the drops table counts|not in the drops table)", note
                )
            else:
                assert counted[(stage, outcome, reason)] == int(count.replace(",", "")), entry
    # the backward filter's drops per kind of triplet, as its statistics count them
    assert "forward_backward_inconsistent" in tallies["backward"]
    assert "dropped: backward_inconsistent" not in page
    assert "dropped: forward_backward_inconsistent — forward triplet dropped" in html.unescape(page)
    # select's pairs with nothing passing are no drop of select: said so
    assert "no_candidate_passed" in tallies["select"] and "pairs (not in the drops table" in (
        html.unescape(tallies["select"])
    )


def test_rows_counted_apart_from_the_statistics_say_what_they_count():
    """compose's rejected rows are attempts (a pair tries several image combinations), its
    statistics count pairs; the backward filter's rows take the names its statistics count."""
    from nhr.analysis.rejections import collect_rejections
    from nhr.analysis.report_page import _tally

    def triplet(tid, kind, reason, parents=()):
        return {
            "triplet_id": tid,
            "kind": kind,
            "status": "dropped",
            "reason": reason,
            "parents": list(parents),
        }

    tables = {
        "backward": [
            triplet("f1", "forward", "backward_inconsistent"),
            triplet("i1", "inverse", "backward_inconsistent", ["f1"]),
            triplet("f2", "forward", "inverse_unavailable"),
            triplet("c0", "composite", "parent_dropped", ["f1", "f3"]),
        ],
        "compose": [triplet(f"c{n}", "composite", "composite_rejected") for n in range(1, 4)],
    }
    found = collect_rejections(list(tables), tables.__getitem__)
    assert [row["reason"] for row in found.by_stage["backward"]] == [
        "forward_backward_inconsistent",
        "inverse_backward_inconsistent",
        "forward_inverse_unavailable",
        "composite_parent_dropped",
    ]
    summary = {
        "reasons": [
            {"stage": "compose", "outcome": "dropped", "reason": "composite_rejected", "count": 1}
        ]
    }
    assert _tally("compose", found.by_stage["compose"], summary).startswith(
        "dropped: composite_rejected 3 attempts (the drops table counts 1 pairs, each once, by "
        "the outcome of its last attempt"
    )
    summary["reasons"][0]["count"] = 3  # one try per pair: the same count, nothing to say
    assert _tally("compose", found.by_stage["compose"], summary) == "dropped: composite_rejected 3"


# Calls that record a reason, and which positional argument it is.
REASON_ARGUMENT = {"drop": 0, "fail": 0, "Failure": 0, "BackendError": 0, "transient": 0,
                   "TransientBackendError": 0, "PermanentBackendError": 0, "ParseError": 1,
                   "LowLevelResult": 2, "append": 0}  # fmt: skip


def _literal(node, names: dict[str, str]) -> str | None:
    """The string a reason expression is: a literal, a module constant, or their sum."""
    import ast

    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left, names), _literal(node.right, names)
        return left + right if left is not None and right is not None else None
    return None


def _collect(node, names: dict[str, str], codes: set[str], prefixes: set[str]) -> None:
    import ast

    if isinstance(node, ast.IfExp):
        _collect(node.body, names, codes, prefixes)
        _collect(node.orelse, names, codes, prefixes)
    elif isinstance(node, ast.JoinedStr):  # f"comparison_{reason}": a prefix
        if node.values and _literal(node.values[0], names):
            prefixes.add(_literal(node.values[0], names))
    elif isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            _collect(element, names, codes, prefixes)
    elif _literal(node, names) is not None:
        codes.add(_literal(node, names))


def emitted_reasons() -> tuple[set[str], set[str]]:
    """The reason codes (and "<call>_" prefixes of composed ones) that the stages, the backends
    and the model-call layer record, read from their source: the literal reason of every
    drop(...)/fail(...), of a ParseError/BackendError/Failure/LowLevelResult, `reason=...`,
    `"reason": ...`, a `reason` or `*_reason` assignment, and the *REASONS tuples."""
    import ast
    from pathlib import Path

    import nhr

    root = Path(nhr.__file__).parent
    files = [*(root / "stages").glob("*.py"), *(root / "backends").rglob("*.py")]
    files += [root / "calls.py", root / "sources.py", root / "parsing.py"]
    codes: set[str] = set()
    prefixes: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text())
        names = {  # module constants such as INCONSISTENT = "backward_inconsistent"
            node.targets[0].id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        }
        found: list[ast.AST] = []  # the reason expressions of this file
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                index = REASON_ARGUMENT.get(name)
                # of all .append calls, only photo design's problems.append("...") records one
                if name == "append" and getattr(func.value, "id", "") != "problems":
                    index = None
                if index is not None and len(node.args) > index:
                    found.append(node.args[index])
                found += [k.value for k in node.keywords if k.arg == "reason"]
            elif isinstance(node, ast.Dict):
                found += [
                    value
                    for key, value in zip(node.keys, node.values)
                    if isinstance(key, ast.Constant) and key.value == "reason"
                ]
            elif isinstance(node, ast.Assign):
                target = node.targets[0]
                name = target.id if isinstance(target, ast.Name) else ""
                if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                    name = str(target.slice.value)
                if name.endswith("reason") or name.endswith("REASONS"):
                    found.append(node.value)
            elif isinstance(node, ast.arguments):  # ParseError's default: "unparseable"
                found += [
                    default
                    for arg, default in zip(node.args[::-1], node.defaults[::-1])
                    if arg.arg == "reason"
                ]
            elif isinstance(node, ast.FunctionDef) and node.name in ("clean_item", "check_image"):
                found += [  # functions that return the reason they found
                    inner.value
                    for inner in ast.walk(node)
                    if isinstance(inner, ast.Return) and inner.value is not None
                ]
        for expression in found:
            _collect(expression, names, codes, prefixes)
    return codes, prefixes


def test_every_reason_the_pipeline_records_has_a_meaning():
    from nhr.analysis.rejections import FAILURE_PREFIXES, reason_words

    codes, prefixes = emitted_reasons()
    # the scan finds the reasons of every kind of site (so it is not silently finding nothing)
    assert {"over_target", "wrong_size", "no_op", "banned_word", "empty_inverse", "exception",
            "forward_backward_inconsistent", "missing_image", "duplicate_edit", "nan_output",
            "unparseable", "timeout", "composite_rejected"} <= codes  # fmt: skip
    assert {"second_judge_", "describe_", "design_"} <= prefixes
    missing = sorted(code for code in codes if reason_words(code) == code)
    assert not missing, f"reasons without a meaning: {missing}"
    assert prefixes <= set(FAILURE_PREFIXES)
    # composed failures read as what failed and why; the pre-filter's "<task>_<failure>" too
    for prefix in [*FAILURE_PREFIXES, "score_", "unwanted_", "aesthetic_"]:
        assert reason_words(f"{prefix}exception").startswith(FAILURE_PREFIXES[prefix] + ": ")
    assert reason_words("aesthetic_exception") != "aesthetic_exception"


def test_backward_reasons_say_which_triplet_is_dropped_and_why():
    from nhr.analysis.rejections import reason_words

    forward = reason_words("forward_backward_inconsistent")
    inverse = reason_words("inverse_backward_inconsistent")
    assert forward != inverse
    assert forward.startswith("forward triplet dropped: its inverse")
    assert inverse.startswith("inverse triplet dropped:") and "forward" in inverse
    assert reason_words("forward_inverse_unavailable").startswith("forward triplet dropped")


def test_prefilter_thresholds_are_in_the_header_and_on_rejected_cards(report):
    run_dir, summary = report
    page = (run_dir / "report" / "index.html").read_text()
    from nhr.config import parse_config

    prefilter = parse_config(RunStore(run_dir).read_config()).prefilter
    low, aes = prefilter.min_adherence, prefilter.min_aesthetics
    header = page[: page.index('id="survival"')]
    assert f"pre-filter scores: adherence &ge; {low:g} and aesthetics &ge; {aes:g}" in header
    assert "low-level check: at least" in header and "pre-filter yes/no:" in header
    # a card dropped for its pre-filter scores names the score below its threshold
    below = re.findall(r"low_prefilter_scores — [^<]*?: ((?:adherence|aesthetics)[^<]*)</p>", page)
    assert below
    for text in below:
        for name, value, threshold in re.findall(r"(\w+) ([\d.]+) &lt; ([\d.]+)", text):
            assert float(value) < float(threshold) == {"adherence": low, "aesthetics": aes}[name]


def test_cards_print_answers_as_yes_or_no(report):
    run_dir, _ = report
    page = (run_dir / "report" / "index.html").read_text()
    assert re.search(r"(no unwanted changes|pleasing) (yes|no)\b", page)
    assert not re.search(r"(no unwanted changes|pleasing) (True|False)", page)


def test_cards_fill_the_width_of_the_window(report, tmp_path):
    """The gallery is a responsive grid: at 1280 px it has a third column, not 40 % empty."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    run_dir, _ = report
    page = (run_dir / "report" / "index.html").read_text()
    assert "repeat(auto-fill" in page and "width: 400px" not in page
    # the released gallery alone, next to the page so its thumbnails load
    gallery = run_dir / "report" / "gallery-only.html"
    gallery.write_text(page[: page.index("<h1>")] + page[page.index('<h2 id="released">') :])
    shot = tmp_path / "gallery.png"
    try:
        drawn = subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'chrome-profile'}",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--virtual-time-budget=2000",
                f"--screenshot={shot}",
                gallery.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        gallery.unlink()
    assert drawn.returncode == 0 and shot.exists(), drawn.stderr[-2000:]
    with Image.open(shot) as image:
        right = image.convert("L").crop((900, 100, 1240, 900))  # beyond two 400 px cards
        drawn_pixels = sum(count for level, count in enumerate(right.histogram()) if level < 200)
    assert drawn_pixels > 0.05 * right.width * right.height


@pytest.mark.parametrize("where", ["local", "object storage"])
def test_a_new_report_keeps_only_the_images_its_page_shows(mined, tmp_path, where):
    """Re-reporting a run (say, after it grew) leaves no thumbnail the new page does not use,
    on local disk and on object storage (memory://, through the same storage layer)."""
    from nhr.storage import open_storage

    run_dir, _ = mined
    if where == "local":
        location = tmp_path / "run"
        shutil.copytree(run_dir, location)
    else:
        location = f"memory://nhr-report-{os.urandom(4).hex()}/run"
        storage = open_storage(location)
        for path in run_dir.rglob("*"):
            if path.is_file():
                storage.write_bytes(path.relative_to(run_dir).as_posix(), path.read_bytes())
    store = RunStore(location)
    build_report(location)
    # an earlier report's thumbnail (and a temporary file a killed write left behind)
    store.write_bytes("report/images/0123456789abcdef.png", b"an earlier report's")
    store.write_bytes("report/images/.0123456789abcdef.png.tmp", b"half")
    build_report(location)
    page = store.storage.read_bytes("report/index.html").decode()
    shown = set(re.findall(r'src="images/([^"]+)"', page))
    assert shown and set(store.storage.names("report/images")) == shown
