"""The simulated judges fail the way real judges fail: each property measured, each able to fail.

The judge model (nhr.backends.sim.judges) is tested on synthetic truths, so every property is
isolated; the named profiles and the human raters on a small calibration population.
"""

from __future__ import annotations

import functools
import statistics

import numpy as np
import pytest
from pydantic import ValidationError

from nhr.backends.sim import calibration, judges, raters
from nhr.backends.sim.config import SimBackendConfig
from nhr.backends.sim.judges import JudgeProfile, read_scores, read_yes_no, unseen_flaws
from nhr.backends.sim.truth import Assessment
from nhr.backends.sim.world import digest

PLAIN = JudgeProfile(noise_adherence=0.0, noise_aesthetics=0.0, sample_share=0.0)


def truth(adherence: dict[str, float], aesthetics: dict[str, float] | None = None) -> Assessment:
    return Assessment(
        parsed=True, adherence_penalties=adherence, aesthetics_penalties=aesthetics or {}
    )


def pairs(count: int, tag: str = "pair") -> list[bytes]:
    return [digest(tag, i) for i in range(count)]


def errors(judge: JudgeProfile, item: Assessment, name: str = "judge", count: int = 3000):
    readings = np.array([read_scores(judge, item, [], name, p) for p in pairs(count)])
    return readings - np.array(item.scores())


# --- truth ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def population() -> list[calibration.Triplet]:
    return calibration.population(900, seed=3)


def test_true_quality_is_continuous_with_a_real_share_of_near_misses():
    low = np.array([min(t.true_scores) for t in population()])
    assert len(np.unique(low.round(2))) > 100  # not a few fixed values
    near = np.mean((low >= 4.0) & (low < 4.7))
    assert near >= 0.2
    wrong_near = [t for t, v in zip(population(), low) if t.error and 4.0 <= v < 4.7]
    assert len({t.error for t in wrong_near}) >= 4  # near-misses of many kinds of flaw


# --- the judge model --------------------------------------------------------------------------


def test_a_blind_spot_hides_its_flaw_kind_at_its_rate_and_no_other():
    item = truth({"partial": 1.0, "extra_change": 1.2})
    judge = PLAIN.model_copy(update={"blind_spots": {"partial": 0.3}})
    hidden = [unseen_flaws(judge, item, "j", p, None) for p in pairs(4000)]
    share = np.mean([h == {"partial"} for h in hidden])
    assert 0.27 <= share <= 0.33
    assert not any("extra_change" in h for h in hidden)
    readings = {read_scores(judge, item, [], "j", p)[0] for p in pairs(200)}
    assert readings == {2.8, 3.8}  # as if the partial edit were complete, or seen in full
    assert not any(unseen_flaws(PLAIN, item, "j", p, None) for p in pairs(500))


def test_errors_are_larger_for_mid_quality_items_than_for_top_ones():
    judge = JudgeProfile(noise_adherence=0.3, noise_aesthetics=0.3, mid_noise_gain=1.0)
    top = np.abs(errors(judge, truth({"finish": 0.1}, {"finish": 0.1}))).mean()
    mid = np.abs(errors(judge, truth({"partial": 2.0}, {"artefact": 2.0}))).mean()
    assert mid > 1.6 * top
    flat = judge.model_copy(update={"mid_noise_gain": 0.0})
    mid_flat = np.abs(errors(flat, truth({"partial": 2.0}, {"artefact": 2.0}))).mean()
    assert mid_flat < 1.2 * np.abs(errors(flat, truth({"partial": 1.0}))).mean() + 0.05


def test_bias_is_separate_from_noise_width():
    item = truth({"partial": 1.5}, {"artefact": 1.5})  # mid-scale: no clipping
    lenient = PLAIN.model_copy(update={"bias_adherence": 0.8, "bias_aesthetics": 0.3})
    shift = errors(lenient, item)
    assert np.allclose(shift[:, 0], 0.8, atol=0.051) and np.allclose(shift[:, 1], 0.3, atol=0.051)
    noisy = JudgeProfile(noise_adherence=0.5, noise_aesthetics=0.5)
    spread = errors(noisy, item)
    assert abs(spread.mean(axis=0)).max() < 0.05 and spread.std(axis=0).min() > 0.4


def test_yes_no_checks_have_separate_false_yes_and_false_no_rates():
    judge = PLAIN.model_copy(update={"false_yes": 0.3, "false_no": 0.05})
    keys = pairs(4000, "request")
    false_yes = np.mean([read_yes_no(judge, False, "j", k, "unwanted") for k in keys])
    false_no = np.mean([not read_yes_no(judge, True, "j", k, "unwanted") for k in keys])
    assert 0.27 <= false_yes <= 0.33 and 0.035 <= false_no <= 0.065


def test_halo_lifts_adherence_of_pretty_but_wrong_edits_only():
    wrong_but_pretty = truth({"wrong_target": 2.5})
    halo = PLAIN.model_copy(update={"halo": 0.4})
    assert read_scores(halo, wrong_but_pretty, [], "j", b"p")[0] == pytest.approx(3.5)
    assert read_scores(PLAIN, wrong_but_pretty, [], "j", b"p")[0] == pytest.approx(2.5)
    ugly = truth({"partial": 1.0}, {"artefact": 2.0})  # aesthetics below adherence: no lift
    assert read_scores(halo, ugly, [], "j", b"p") == read_scores(PLAIN, ugly, [], "j", b"p")


def test_judge_quality_differs_by_operation():
    judge = JudgeProfile(
        noise_adherence=0.4,
        noise_aesthetics=0.4,
        category_noise={"style_transfer": 1.6, "remove_object": 0.7},
    )
    item = truth({"partial": 1.0}, {"artefact": 1.0})

    def mae(operation: str) -> float:
        readings = [read_scores(judge, item, [operation], "j", p)[0] for p in pairs(2000)]
        return float(np.mean(np.abs(np.array(readings) - 4.0)))

    assert mae("style_transfer") > 1.8 * mae("remove_object")


def test_leniency_and_blind_spots_differ_by_operation():
    item = truth({"partial": 1.0})  # true adherence 4.0
    judge = PLAIN.model_copy(
        update={
            "blind_spots": {"partial": 0.2},
            "category_blind_spots": {"remove_object": 2.5, "change_color": 0.0},
        }
    )

    def missed(operations: list[str]) -> float:
        hidden = [unseen_flaws(judge, item, "j", p, None, b"", operations) for p in pairs(2000)]
        return float(np.mean([bool(h) for h in hidden]))

    assert 0.17 <= missed(["add_object"]) <= 0.23  # an operation not named: the base chance
    assert 0.46 <= missed(["remove_object"]) <= 0.54
    assert missed(["change_color"]) == 0.0
    # a composite is judged by the mean over its operations: (2.5 + 1) / 2 x 0.2
    assert 0.31 <= missed(["remove_object", "add_object"]) <= 0.39
    # leniency moves the readings of its operation only, on both scales
    lenient = PLAIN.model_copy(
        update={"category_bias": {"style_transfer": 0.4, "add_object": -0.2}}
    )
    assert read_scores(lenient, item, ["style_transfer"], "j", b"p") == pytest.approx((4.4, 5.0))
    assert read_scores(lenient, item, ["add_object"], "j", b"p") == pytest.approx((3.8, 4.8))
    assert read_scores(lenient, item, ["change_color"], "j", b"p") == pytest.approx((4.0, 5.0))
    assert read_scores(lenient, item, ["style_transfer", "add_object"], "j", b"p")[0] == 4.1


def test_per_operation_settings_are_validated_and_settable_per_model():
    for bad in (
        {"category_bias": {"paint_it": 0.2}},  # not an operation
        {"category_blind_spots": {"remove_object": -1.0}},
        {"category_noise": {"remove_object": -0.5}},
        {"category_bias": {"remove_object": 9.0}},
    ):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            JudgeProfile(**bad)
    with pytest.raises(ValidationError, match="mapping"):
        SimBackendConfig(judge="tuned-gemini-2.0-flash", judge_params={"category_bias": 0.2})
    with pytest.raises(ValidationError, match="must be a number"):
        SimBackendConfig(judge="tuned-gemini-2.0-flash", judge_params={"halo": {"x": 1.0}})
    base = judges.PROFILES["tuned-gemini-2.0-flash"]
    config = SimBackendConfig(
        judge="tuned-gemini-2.0-flash",
        judge_params={"category_bias": {"move_object": 0.3}, "halo": 0.5},
    )
    profile = config.judge_profile()
    assert profile.category_bias["move_object"] == 0.3 and profile.halo == 0.5
    # the entries not named stay the profile's own
    assert profile.category_bias["style_transfer"] == base.category_bias["style_transfer"]
    assert profile.category_noise == base.category_noise


def test_two_judges_share_failures_within_a_true_score_group():
    item = truth({"partial": 1.2}, {"artefact": 1.0})

    def correlation(shared: float) -> float:
        a = JudgeProfile(noise_adherence=0.5, shared=shared)
        b = JudgeProfile(noise_adherence=0.9, shared=shared, bias_adherence=0.2)
        return float(np.corrcoef(errors(a, item, "pre")[:, 0], errors(b, item, "val")[:, 0])[0, 1])

    assert correlation(0.5) > 0.4
    assert abs(correlation(0.0)) < 0.08

    blind = {"partial": 0.3}
    a = PLAIN.model_copy(update={"blind_spots": blind, "shared": 0.6})
    b = PLAIN.model_copy(update={"blind_spots": blind, "shared": 0.6})
    both = np.array(
        [
            (
                bool(unseen_flaws(a, item, "pre", p, None)),
                bool(unseen_flaws(b, item, "val", p, None)),
            )
            for p in pairs(3000)
        ]
    )
    missed_by_pre = both[:, 0]
    assert both[missed_by_pre, 1].mean() > 1.5 * both[~missed_by_pre, 1].mean()


def test_sampling_gives_partly_independent_answers_and_temperature_zero_does_not():
    judge = JudgeProfile(noise_adherence=0.5, noise_aesthetics=0.5, sample_share=0.4)
    item = truth({"partial": 1.2}, {"artefact": 1.0})
    p = b"one pair"
    assert read_scores(judge, item, [], "j", p) == read_scores(judge, item, [], "j", p)
    first = np.array([read_scores(judge, item, [], "j", q, b"s1" + q)[0] for q in pairs(2000)])
    second = np.array([read_scores(judge, item, [], "j", q, b"s2" + q)[0] for q in pairs(2000)])
    r = np.corrcoef(first, second)[0, 1]
    assert 0.45 < r < 0.8  # the shared and stable part remains; the sampled part is fresh
    mean_of_two = (first + second) / 2
    assert np.abs(mean_of_two - 3.8).mean() < np.abs(first - 3.8).mean()


def test_unknown_judge_profile_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ValidationError) as caught:
        SimBackendConfig(judge="gpt-judge")
    for name in judges.PROFILES:
        assert name in str(caught.value)
    with pytest.raises(ValidationError):
        SimBackendConfig(judge="qwen2.5-vl-72b", blind_spots={"typo": 0.1})
    config = SimBackendConfig(judge="qwen2.5-vl-72b", blind_spots={"partial": 0.9})
    profile = config.judge_profile()
    assert profile.blind_spots["partial"] == 0.9
    assert (
        profile.blind_spots["extra_change"]
        == judges.PROFILES["qwen2.5-vl-72b"].blind_spots["extra_change"]
    )


# --- the named profiles and the raters ---------------------------------------------------------


@functools.lru_cache(maxsize=1)
def paper_shaped() -> tuple[list[calibration.Triplet], np.ndarray]:
    """The paper-shaped population and its simulated 2-4-rater labels."""
    triplets = calibration.paper_shaped_population(1500, seed=0)
    true = np.array([t.true_scores for t in triplets])
    pool = calibration.PAPER_SHAPED_RATERS
    return triplets, raters.corrected_labels(raters.rate(true, pool, seed=0), len(true))


def test_the_paper_shaped_population_spreads_like_the_papers_validation_set():
    triplets, labels = paper_shaped()
    shares = calibration.bucket_shares(labels)  # the paper's buckets are of its labels
    for k, scale in enumerate(("instruction", "aesthetics")):
        paper = np.array(calibration.paper_label_shares(scale))
        assert np.abs(shares[k] - paper).max() <= 0.07, (scale, shares[k].round(3))
    assert 0.33 <= np.mean((labels > 4.0).all(axis=1)) <= 0.48  # paper: ~42 %
    # the two scores go together: more positives than independent scores would give
    true = np.array([t.true_scores for t in triplets])
    independent = np.mean(true[:, 0] > 4.0) * np.mean(true[:, 1] > 4.0)
    assert np.mean([t.positive for t in triplets]) > independent + 0.05


@pytest.mark.parametrize("name", sorted(calibration.PAPER))
def test_every_profile_matches_the_paper_against_rater_labels(name):
    triplets, labels = paper_shaped()
    # twice the tolerance: 1,500 triplets and one rating round (the fit used 6,000 and three)
    loose = {key: 2 * value for key, value in calibration.TOLERANCE.items()}
    metrics = calibration.judge_metrics(judges.PROFILES[name], triplets, name, labels=labels)
    for key, target in calibration.PAPER[name].items():
        assert abs(metrics[key] - target) <= loose[key], (key, metrics[key])


def test_the_tuned_profile_reads_each_label_bucket_like_the_papers_validator():
    triplets, labels = paper_shaped()
    name = "tuned-gemini-2.0-flash"
    seen = calibration.readings(judges.PROFILES[name], triplets, name)
    for k, scale in enumerate(("instruction", "aesthetics")):
        ours, paper = calibration.confusion(seen, labels, k), calibration.paper_confusion(scale)
        distance = np.abs(ours - paper).sum(axis=1)  # 0: the same row, 2: nothing in common
        assert distance.mean() <= 0.7, (scale, distance.round(2))
        # Figure B.4's strong diagonal: clear failures and clear successes read as such
        assert ours[0, :2].sum() >= 0.7 and ours[5, 4:].sum() >= 0.55, (scale, ours.round(2))
    # Figure B.3: the error is largest for mid-quality items, smallest for the top ones
    bucket = calibration.buckets(labels[:, 0])
    mae = [np.abs(seen[bucket == b, 0] - labels[bucket == b, 0]).mean() for b in range(6)]
    assert min(mae[1], mae[2]) > mae[5] + 0.15, np.round(mae, 2)


def test_profiles_rank_like_the_papers_judges():
    triplets, labels = paper_shaped()
    figures = {
        name: calibration.judge_metrics(judge, triplets, name, labels=labels)
        for name, judge in judges.PROFILES.items()
    }
    mae = {name: f["mae_instr"] for name, f in figures.items()}
    # the paper's order: tuned 0.50 < 2.5-pro 0.87 < Qwen 0.96 < vanilla flash 1.24
    assert mae["tuned-gemini-2.0-flash"] < mae["gemini-2.5-pro"]
    assert mae["gemini-2.5-pro"] < min(mae["qwen2.5-vl-72b"], mae["gemini-2.0-flash"])
    vanilla = figures["gemini-2.0-flash"]
    assert vanilla["recall"] > 0.85 and vanilla["precision"] < 0.55  # lenient
    precision = {name: f["precision"] for name, f in figures.items()}
    assert max(precision, key=precision.get) == "tuned-gemini-2.0-flash"


def test_raters_agree_like_the_papers_and_bias_correction_beats_the_plain_mean():
    true = np.array([t.true_scores for t in population()])
    agreement, plain, corrected = [], [], []
    for seed in range(3):
        ratings = raters.rate(true, raters.RaterPool(), seed=seed)
        agreement.append(raters.agreement(ratings))
        plain.append(np.abs(raters.plain_labels(ratings, len(true)) - true).mean(axis=0))
        corrected.append(np.abs(raters.corrected_labels(ratings, len(true)) - true).mean(axis=0))
    instruction, aesthetics = np.mean(agreement, axis=0)
    assert abs(instruction - 0.64) <= 0.06 and abs(aesthetics - 0.41) <= 0.06
    # the paper-shaped population spreads wider: its raters are calibrated apart
    triplets, _ = paper_shaped()
    wide = np.array([t.true_scores for t in triplets])
    pool = calibration.PAPER_SHAPED_RATERS
    instruction, aesthetics = raters.agreement(raters.rate(wide, pool, seed=0))
    assert abs(instruction - 0.64) <= 0.06 and abs(aesthetics - 0.41) <= 0.06
    assert (np.mean(corrected, axis=0) < np.mean(plain, axis=0)).all()
    # the correction removes what it should: with no rater bias it gains nothing
    unbiased = raters.RaterPool(bias_sd=(0.0, 0.0))
    ratings = raters.rate(true, unbiased, seed=0)
    gain = (
        np.abs(raters.plain_labels(ratings, len(true)) - true).mean()
        - np.abs(raters.corrected_labels(ratings, len(true)) - true).mean()
    )
    assert abs(gain) < 0.01
    assert statistics.mean(len(set(ratings.rater[ratings.item == i])) for i in range(50)) >= 2


def test_raters_agree_most_at_the_ends_of_the_scale_and_labels_stay_on_it():
    true = np.repeat([[5.0, 5.0], [3.0, 3.0], [1.0, 1.0]], 400, axis=0)
    spread = {}
    for end_spread in (1.0, 0.4):
        pool = raters.RaterPool(end_spread=end_spread)
        ratings = raters.rate(true, pool, seed=0)
        deviation = np.abs(ratings.scores - true[ratings.item])
        spread[end_spread] = [deviation[true[ratings.item, 0] == v].mean() for v in (5, 3, 1)]
        labels = raters.corrected_labels(ratings, len(true))
        assert labels.min() >= 1.0 and labels.max() <= 5.0  # a correction can't leave the scale
    # the middle is rated alike; the ends agree more with a smaller end spread
    assert spread[0.4][1] == pytest.approx(spread[1.0][1], abs=0.05)
    assert spread[0.4][0] < spread[1.0][0] - 0.1 and spread[0.4][2] < spread[1.0][2] - 0.1


def test_per_category_spearman_is_measured_and_fitted_like_table_b2():
    """Table B.2's figure (Spearman of the geometric means per ImgEdit category): overall as
    the paper's, and the single-operation categories fitted to it: close on average, in the
    paper's order, style transfer the weakest (the profile before the fit: mean deviation
    0.09, order 0.6, background the weakest)."""
    from scipy.stats import spearmanr

    name = "tuned-gemini-2.0-flash"
    triplets, labels = paper_shaped()
    seen = calibration.readings(judges.PROFILES[name], triplets, name)
    rho = calibration.category_spearman(triplets, seen, labels)
    assert abs(rho["Overall"][0] - calibration.PAPER_OVERALL_RHO) <= 0.06
    singles = {k: r for k, (r, _) in rho.items() if k not in ("Overall", "Compose")}
    assert set(singles) == set(calibration.PAPER_CATEGORY_RHO) - {"Compose"}
    paper = [calibration.PAPER_CATEGORY_RHO[k][0] for k in singles]
    deviation = np.abs(np.array(list(singles.values())) - paper)
    assert deviation.mean() <= 0.07, {k: round(r, 2) for k, r in singles.items()}
    assert spearmanr(list(singles.values()), paper).statistic >= 0.8
    assert min(singles, key=singles.get) == "Style"
    # the categories partition part of the population; composites are several operations
    assert sum(n for k, (_, n) in rho.items() if k != "Overall") < rho["Overall"][1]
    assert rho["Compose"][1] == sum(len(t.operations) > 1 for t in triplets)
