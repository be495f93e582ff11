"""`nhr calibrate`: a judge's figures against (simulated) human ratings."""

import json
import math
import shutil

import numpy as np
import pytest
import yaml

from nhr.calibrate import (
    Judge,
    JudgeScale,
    calibrate,
    category_thresholds,
    item_categories,
    judge_figures,
    load_judge_config,
    threshold_snippet,
    wilson,
    write_report,
)
from nhr.cli import main
from nhr.config import parse_config

TUNED = "tuned-gemini-2.0-flash"


@pytest.fixture(scope="module")
def population():
    from nhr.backends.sim import calibration

    return calibration.population(600, seed=5)


def rated(population, seed=1, pool=None):
    """Label rows from the simulated rater panel, one item per triplet."""
    from nhr.backends.sim import raters

    truth = np.array([t.true_scores for t in population])
    ratings = raters.rate(truth, pool or raters.RaterPool(), seed=seed)
    return [
        {
            "item": f"c{item}",
            "rater": f"r{rater}",
            "instruction_score": float(scores[0]),
            "aesthetics_score": float(scores[1]),
            "category": population[item].operations[0],
            "source_image": None,
            "edited_image": None,
            "instruction": None,
            "comment": None,
        }
        for item, rater, scores in zip(ratings.item, ratings.rater, ratings.scores)
    ]


def sim_judge(population, name=TUNED):
    from nhr.backends.sim import calibration
    from nhr.backends.sim.judges import profile

    seen = calibration.readings(profile(name), population, name)
    return Judge(
        "validator", {f"c{i}": tuple(map(float, s)) for i, s in enumerate(seen)}, (4.7, 4.7)
    )


def test_the_report_has_the_documented_layout_and_is_deterministic(population):
    rows = rated(population)
    judge = sim_judge(population)
    report = calibrate(rows, [judge], item_categories(rows, {}), rounds=200, seed=3)
    figures = report["judges"]["validator"]
    for scale in ("instruction", "aesthetics"):
        for key in ("mae", "spearman"):
            assert isinstance(figures[scale][key], float)
            low, high = figures[scale][f"{key}_ci"]
            assert low <= figures[scale][key] <= high
    for key in ("precision", "recall", "f1", "accuracy"):
        low, high = figures["at_threshold"][f"{key}_ci"]
        assert low <= figures["at_threshold"][key] <= high
    assert set(figures["mae_by_bucket"]["instruction"]) == {"1-2", "2-3", "3-4", "4-5"}
    assert np.sum(figures["confusion"]["instruction"]) == figures["n"] == len(population)
    assert figures["pr_curve"][0]["recall"] == 1.0  # threshold 1: everything kept
    assert set(figures["by_category"]) == {t.operations[0] for t in population}
    raters = report["raters"]
    assert raters["items"] == len(population) and raters["raters"] > 1
    assert 0.2 < raters["agreement"]["instruction"]["spearman"] < 0.9
    again = calibrate(rows, [judge], item_categories(rows, {}), rounds=200, seed=3)
    assert json.dumps(again) == json.dumps(report)  # seeded bootstrap: same report


def as_metrics(figures: dict) -> dict[str, float]:
    """A judge's calibration figures under the simulator's metric names (calibration.PAPER)."""
    return {
        "mae_instr": figures["instruction"]["mae"],
        "mae_aes": figures["aesthetics"]["mae"],
        "rho_instr": figures["instruction"]["spearman"],
        "rho_aes": figures["aesthetics"]["spearman"],
        "precision": figures["at_threshold"]["precision"],
        "recall": figures["at_threshold"]["recall"],
        "accuracy": figures["at_threshold"]["accuracy"],
    }


def test_against_the_simulators_truth_the_configured_figures_come_back(population):
    """Calibrating the tuned profile against the simulator's own truth reproduces the figures
    the simulator computes for it (its configured behaviour), each inside its 95 % interval."""
    from nhr.backends.sim import calibration
    from nhr.backends.sim.judges import profile

    truth = {f"c{i}": t.true_scores for i, t in enumerate(population)}
    figures = judge_figures(sim_judge(population), truth, {}, rounds=300)
    expected = calibration.judge_metrics(profile(TUNED), population, TUNED)
    for key, value in as_metrics(figures).items():
        assert value == pytest.approx(expected[key], abs=1e-5), key


def test_calibrating_the_tuned_profile_on_paper_shaped_ratings_gives_the_papers_figures():
    """The paper's protocol through the user's tool: simulated raters rate a paper-shaped
    population, `calibrate` measures the tuned profile against their labels, and the figures
    are the paper's Table 1 / Table B.1 rows within twice the fitting tolerance."""
    from nhr.backends.sim import calibration

    triplets = calibration.paper_shaped_population(1200, seed=4)
    rows = rated(triplets, seed=4, pool=calibration.PAPER_SHAPED_RATERS)
    report = calibrate(rows, [sim_judge(triplets)], {}, rounds=100, seed=0)
    measured = as_metrics(report["judges"]["validator"])
    for key, target in calibration.PAPER[TUNED].items():
        assert abs(measured[key] - target) <= 2 * calibration.TOLERANCE[key], (key, measured[key])


def test_category_thresholds_reach_the_target_where_the_data_allows():
    random = np.random.default_rng(0)
    n = 400
    names = ["remove_object"] * n + ["add_object"] * n
    true = random.uniform(1, 5, size=(2 * n, 2))
    noise = np.where(np.array(names)[:, None] == "remove_object", 0.9, 0.15)
    seen = np.clip(true + random.normal(0, 1, size=true.shape) * noise, 1, 5)
    positive = (true > 4.0).all(axis=1)
    chosen = category_thresholds(seen, positive, names, JudgeScale(), 0.9, min_kept=10)
    assert chosen["add_object"]["reached"] and chosen["add_object"]["precision"] >= 0.9
    # the noisy category needs a stricter threshold than the clean one
    assert chosen["remove_object"]["adherence"] > chosen["add_object"]["adherence"]
    snippet = threshold_snippet(chosen)
    config = parse_config({"models": "sim", **snippet})
    assert set(config.validate_.thresholds) == {"remove_object", "add_object"}


def blind_spot_population(seed=0, n=400):
    """add_object: the judge tracks the truth; replace_object: its high scores are blind spots
    (half of them wrong whatever the score), so no threshold reaches 0.9 there."""
    random = np.random.default_rng(seed)
    names = ["add_object"] * n + ["replace_object"] * n
    true = random.uniform(2.5, 5, size=(2 * n, 2))
    seen = np.clip(true + random.normal(0, 0.15, size=true.shape), 1, 5)
    blind = random.random(n) < 0.5
    seen[n:][blind] = random.uniform(4.7, 5, size=(int(blind.sum()), 2))
    true[n:][blind] = random.uniform(1, 3, size=(int(blind.sum()), 2))
    return seen, (true > 4.0).all(axis=1), names


def test_unreachable_categories_are_excluded_only_when_asked():
    seen, positive, names = blind_spot_population()
    kept = category_thresholds(seen, positive, names, JudgeScale(), 0.9, floor=(4.7, 4.7))
    assert not kept["replace_object"]["reached"] and not kept["replace_object"]["exclude"]
    assert kept["replace_object"]["adherence"] >= 4.7  # never loosened
    plain = threshold_snippet(kept)["validate"]["thresholds"]
    assert "exclude" not in plain["replace_object"]

    chosen = category_thresholds(
        seen, positive, names, JudgeScale(), 0.9, floor=(4.7, 4.7), exclude_unreachable=True
    )
    assert chosen["replace_object"]["exclude"] and not chosen["add_object"]["exclude"]
    snippet = threshold_snippet(chosen)
    assert snippet["validate"]["thresholds"]["replace_object"] == {"exclude": True}
    config = parse_config({"models": "sim", **snippet})
    assert config.validate_.excluded("replace_object")
    assert not config.validate_.excluded("add_object")

    # released precision on the labels: the global 4.7 vs the per-category rule with exclusion
    def precision(validate):
        rule = np.array([validate.pair(name) for name in names])
        kept = (seen >= rule - 1e-6).all(axis=1)
        return positive[kept].mean(), int(kept.sum())

    before, released_before = precision(parse_config({"models": "sim"}).validate_)
    after, released_after = precision(config.validate_)
    assert after > before + 0.1 and after >= 0.9
    assert 0 < released_after < released_before  # the stated cost: fewer released


def test_an_unreachable_category_is_tightened_where_its_precision_is_surely_best():
    """A lenient judge: at 4.7 half of what it keeps is wrong, at 4.9 a sixth; 7 of a handful
    of 5.0 readings are right, the best point precision. The category is tightened to 4.9
    (many items, a better lower bound), not to the 5.0 peak, and never below the floor."""
    blocks = [(4.7, 200, 100), (4.8, 200, 120), (4.9, 200, 168), (5.0, 8, 7)]  # value, n, right
    seen = np.concatenate([np.full((n, 2), value) for value, n, _ in blocks])
    positive = np.concatenate([np.arange(n) < right for _, n, right in blocks])
    names = ["style_transfer"] * len(seen)
    chosen = category_thresholds(seen, positive, names, JudgeScale(), 0.9, min_kept=5)
    entry = chosen["style_transfer"]
    assert not entry["reached"] and entry["best_precision"] == 0.875
    assert 4.8 < entry["adherence"] <= 4.9 and entry["kept"] == 208  # the 4.9 and 5.0 readings
    floor = category_thresholds(
        seen[:400], positive[:400], names[:400], JudgeScale(), 0.9, floor=(4.75, 4.75)
    )
    assert floor["style_transfer"]["adherence"] >= 4.75


def test_no_threshold_below_the_lowest_labelled_reading():
    """Labels of items that all read >= 4.7 (e.g. an audit of released triplets) say nothing
    about lower thresholds: a category reaching the target there stays at 4.7."""
    seen = np.full((40, 2), 4.7)
    seen[20:] = 4.9
    positive = np.ones(40, dtype=bool)
    chosen = category_thresholds(seen, positive, ["add_object"] * 40, JudgeScale(), 0.9)
    assert chosen["add_object"]["reached"] and chosen["add_object"]["adherence"] == 4.7


def test_the_wilson_bound_keeps_noise_from_deciding():
    assert wilson(45, 50)[0] < 0.9 < wilson(45, 50)[1]
    assert wilson(0, 0) == (0.0, 1.0)
    # a small category at 0.85-ish: the point estimate says unreachable, the interval says
    # it may be within reach, so it is not excluded (kept at the global pair) under confidence
    random = np.random.default_rng(3)
    n = 30
    names = ["add_object"] * n
    seen = np.full((n, 2), 4.8)
    positive = random.random(n) < 0.85
    point = category_thresholds(
        seen, positive, names, JudgeScale(), 0.95, min_kept=10, exclude_unreachable=True
    )
    bounded = category_thresholds(
        seen,
        positive,
        names,
        JudgeScale(),
        0.95,
        min_kept=10,
        exclude_unreachable=True,
        confidence=0.95,
    )
    assert point["add_object"]["exclude"]
    assert not bounded["add_object"]["exclude"] and not bounded["add_object"]["reached"]


def test_the_report_carries_the_exclusion(tmp_path):
    seen, positive, names = blind_spot_population(seed=1, n=200)
    items = [f"i{k}" for k in range(len(names))]
    truth = {i: (5.0, 5.0) if p else (2.0, 2.0) for i, p in zip(items, positive)}
    judge = Judge("validator", {i: tuple(s) for i, s in zip(items, seen)}, (4.7, 4.7))
    figures = judge_figures(
        judge, truth, dict(zip(items, names)), rounds=20, exclude_unreachable=True
    )
    assert figures["category_thresholds"]["replace_object"]["exclude"]
    without = judge_figures(judge, truth, dict(zip(items, names)), rounds=20)
    assert not any(entry["exclude"] for entry in without["category_thresholds"].values())

    from nhr.storage import open_storage

    report = calibrate([], [], {}, rounds=20, exclude_unreachable=True)
    report["judges"] = {"validator": figures}
    storage = open_storage(str(tmp_path / "report"))
    assert "thresholds-validator.yaml" in write_report(storage, report)
    text = (tmp_path / "report" / "thresholds-validator.yaml").read_text()
    assert "excluded" in text and "category_excluded" in text
    assert yaml.safe_load(text)["validate"]["thresholds"]["replace_object"] == {"exclude": True}
    assert "excluded (target unreachable)" in (tmp_path / "report" / "calibration.md").read_text()


def test_an_unbounded_judge_has_ranks_but_no_mae():
    random = np.random.default_rng(1)
    true = random.uniform(1, 5, size=(200, 2))
    reward = np.log(true) * 3 - 2 + random.normal(0, 0.1, size=true.shape)  # any monotone scale
    judge = Judge(
        "reward",
        {f"i{k}": tuple(v) for k, v in enumerate(reward)},
        (1.8, 1.8),
        JudgeScale(None, None),
    )
    figures = judge_figures(judge, {f"i{k}": tuple(v) for k, v in enumerate(true)}, {}, rounds=100)
    assert figures["instruction"]["mae"] is None and figures["confusion"] == {}
    assert figures["instruction"]["spearman"] > 0.9
    thresholds = [row["threshold"] for row in figures["pr_curve"]]
    assert min(thresholds) < 0 < max(thresholds)  # the grid follows the observed scores
    assert not math.isnan(figures["at_threshold"]["precision"])


def test_judge_presets_parse_with_only_their_judge_role():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "judges"
    presets = sorted(folder.glob("*.yaml"))
    assert len(presets) >= 3
    for preset in presets:
        config = load_judge_config(preset)
        judge = config.validate_.judge
        assert config.models.validator.backend != "sim", preset
        low, high = judge.low, judge.high
        assert low <= config.validate_.adherence_threshold <= high


def test_cli_calibrates_a_rated_run_and_writes_the_report(mined, tmp_path, capsys):
    run_dir, _ = mined
    assert main(["label", str(run_dir), "--sample", "60", "--simulate-raters", "3"]) == 0
    output = tmp_path / "report"
    code = main(
        [
            "calibrate",
            str(run_dir),
            "--run",
            str(run_dir),
            "--judge",
            "configs/quickstart.yaml",
            "--output",
            str(output),
            "--bootstrap",
            "100",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "validator" in printed and "quickstart" in printed
    report = json.loads((output / "calibration.json").read_text())
    assert {"validator", "prefilter", "quickstart"} <= set(report["judges"])
    assert report["judges"]["quickstart"]["n"] == report["items"]  # every item re-scored
    assert (output / "calibration.md").read_text().startswith("# Judge calibration")
    assert (output / "pr_curve-quickstart.png").read_bytes()[:4] == b"\x89PNG"
    for snippet in output.glob("thresholds-*.yaml"):
        parse_config({"models": "sim", **yaml.safe_load(snippet.read_text())})


@pytest.mark.parametrize("relative", [False, True])
def test_cli_rescores_outside_triplets_by_path(tmp_path, capsys, relative):
    """Absolute paths, and paths relative to the labels file's folder (docs/labels.md), as
    export-tuning reads them; the command runs from elsewhere (the repository root)."""
    from PIL import Image

    rows = []
    for index in range(8):
        paths = []
        for kind in ("source", "edited"):
            path = tmp_path / f"{kind}{index}.png"
            Image.new("RGB", (16, 16), (index * 20, 40, 90)).save(path)
            paths.append(path.name if relative else str(path))
        for rater in ("ann", "bob"):
            rows.append(
                {
                    "source_image": paths[0],
                    "edited_image": paths[1],
                    "instruction": f"Make it brighter {index}",
                    "rater": rater,
                    "instruction_score": float(1 + (index + (rater == "bob")) % 5),
                    "aesthetics_score": 3.0,
                }
            )
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in rows))
    output = tmp_path / "out"
    args = ["calibrate", str(labels), "--judge", "configs/quickstart.yaml", "--output", str(output)]
    assert main(args + ["--bootstrap", "50"]) == 0
    report = json.loads((output / "calibration.json").read_text())
    assert report["judges"]["quickstart"]["n"] == 8


def test_cli_needs_a_judge(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("item,rater,instruction_score,aesthetics_score\na,r,4,4\n")
    assert main(["calibrate", str(labels)]) == 2
    assert "--run" in capsys.readouterr().err


def test_cli_writes_exclusions_only_when_asked(mined, tmp_path, capsys):
    run_dir, _ = mined
    assert main(["label", str(run_dir), "--sample", "60", "--simulate-raters", "3"]) == 0
    reports = {}
    for name, extra in (("plain", []), ("excluding", ["--exclude-unreachable"])):
        output = tmp_path / name
        args = ["calibrate", str(run_dir), "--run", str(run_dir), "--output", str(output)]
        assert main([*args, "--bootstrap", "50", "--min-kept", "5", *extra]) == 0
        reports[name] = json.loads((output / "calibration.json").read_text())
        for snippet in output.glob("thresholds-*.yaml"):
            text = snippet.read_text()
            assert ("exclude: true" in text) <= (name == "excluding"), text
            parse_config({"models": "sim", **yaml.safe_load(text)})
    assert reports["plain"]["exclude_unreachable"] is False
    assert reports["excluding"]["exclude_unreachable"] is True


def test_cli_says_which_categories_got_thresholds_and_why_none_did(mined, tmp_path, capsys):
    """Asked for per-category thresholds, calibrate says per judge how many categories got
    one and in which file, or, with too few rated items, that none did and why (the report's
    table too), instead of leaving the snippet out without a word."""
    run_dir, _ = mined
    assert main(["label", str(run_dir), "--sample", "60", "--simulate-raters", "3"]) == 0
    capsys.readouterr()
    args = ["calibrate", str(run_dir), "--run", str(run_dir), "--bootstrap", "50"]
    few = tmp_path / "few"
    assert main([*args, "--output", str(few)]) == 0
    printed = capsys.readouterr().out
    assert "per-category thresholds at 0.9: none; no category keeps 25 scored items" in printed
    assert not list(few.glob("thresholds-*.yaml"))
    assert "too few kept (< 25)" in (few / "calibration.md").read_text()
    some = tmp_path / "some"
    assert main([*args, "--output", str(some), "--min-kept", "5"]) == 0
    printed = capsys.readouterr().out
    written = sorted(p.name for p in some.glob("thresholds-*.yaml"))
    assert written
    for name in written:
        assert "categories (" in printed and f": {name}" in printed


def test_judges_of_one_name_are_all_reported_and_labels_in_a_run_find_its_images(
    mined, tmp_path, capsys
):
    """Two --judge configs named judge.yaml in two folders: both in the report. Labels kept
    in the run (RUN/labels) are re-scored from the run's images without --run."""
    run_dir, _ = mined
    assert main(["label", str(run_dir), "--sample", "30", "--simulate-raters", "2"]) == 0
    configs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        configs.append(tmp_path / folder / "judge.yaml")
        shutil.copy("configs/quickstart.yaml", configs[-1])
    output = tmp_path / "report"
    argv = ["calibrate", str(run_dir / "labels"), "--output", str(output), "--bootstrap", "50"]
    for config in configs:
        argv += ["--judge", str(config)]
    assert main(argv) == 0
    report = json.loads((output / "calibration.json").read_text())
    assert set(report["judges"]) == {"judge", "b/judge"}
    assert all(figures["n"] == report["items"] for figures in report["judges"].values())
    assert (output / "pr_curve-b-judge.png").is_file()
    # a second calibration into the folder leaves none of the first one's per-judge files
    assert main(argv[: argv.index("--judge")] + ["--judge", str(configs[0])]) == 0
    assert not list(output.glob("*b-judge*"))


def test_a_judge_that_scores_nothing_fails_the_calibration(mined, tmp_path, capsys):
    run_dir, _ = mined
    assert main(["label", str(run_dir), "--sample", "10", "--simulate-raters", "2"]) == 0
    config = yaml.safe_load(open("configs/quickstart.yaml").read())
    config["models"]["validator"]["faults"] = {"timeout": 1.0}
    config["retry"] = {"max_attempts": 1, "backoff_s": 0.0}
    judge = tmp_path / "dead.yaml"
    judge.write_text(yaml.safe_dump(config))
    argv = ["calibrate", str(run_dir / "labels"), "--judge", str(judge), "--bootstrap", "20"]
    assert main([*argv, "--output", str(tmp_path / "out")]) == 3
    assert "judge dead scored none of the" in capsys.readouterr().err
    assert main([*argv, "--role", "nosuch"]) == 2
