"""How a simulated vision-language judge errs, and the named profiles of real judges.

A judge sees two images and an instruction; the simulator knows what truly changed
(`truth.Assessment`: continuous scores and the flaws behind them). A `JudgeProfile` turns
that truth into the judge's reading, failing the way real judges fail (docs/simulator.md):

- blind spots: per flaw kind, a chance that the judge reads the edit as if that flaw were
  absent (a faint left-over shadow, a small side change, an inherited source defect...);
- halo: a pretty edit that misses the instruction reads higher on adherence;
- bias (leniency) apart from noise width, and noise that is larger for mid-quality items than
  for top ones, scaled per operation (judges are better at some categories than others);
- favourite values: a judge answers some numbers more often than others (a judge fine-tuned on
  rater means learned the values such means take), which shapes the survival curve S(T);
- shared failures: part of every error, blind spots included, is a property of the image pair
  common to all judges, so a pre-filter and a validator tend to be fooled by the same items;
- sampling: at temperature 0 a judge gives the same answer to the same request; when sampled,
  `sample_share` of its own error variance (and of its blind-spot draws) is drawn afresh per
  request, so K samples are partly independent. A second judge profile shares only the
  `shared` part of the error with the first.
- yes/no checks with separate false-yes and false-no rates.

Everything is keyed by content digests, so answers are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nhr.backends.sim.truth import Assessment
from nhr.backends.sim.world import rng

_NORMAL = NormalDist()
SOURCE_FLAWS = frozenset({"source_defect"})  # flaws the edit inherits rather than makes
# profile settings given per operation (operation -> number), settable one entry at a time
PER_OPERATION: tuple[str, ...] = ("category_noise", "category_bias", "category_blind_spots")
FLAW_KINDS: tuple[str, ...] = (
    "partial",
    "extra_change",
    "wrong_target",
    "source_defect",
    "artefact",
    "noise",
    "color_drift",
    "noop",
)


class JudgeProfile(BaseModel):
    """The error model of one judge. Score points are on the 1-5 scale."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    noise_adherence: float = Field(0.5, ge=0, description="noise std-dev for a top item")
    noise_aesthetics: float = Field(0.5, ge=0, description="noise std-dev for a top item")
    mid_noise_gain: float = Field(
        0.0, ge=0, description="extra noise at a true score of 3, as a share of the top noise"
    )
    bias_adherence: float = Field(0.0, description="added to every adherence reading")
    bias_aesthetics: float = Field(0.0, description="added to every aesthetics reading")
    noise_correlation: float = Field(
        0.5, ge=0, le=1, description="correlation of the adherence and aesthetics noise"
    )
    halo: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of (aesthetics - adherence), when positive, added to adherence",
    )
    blind_spots: dict[str, float] = Field(
        default_factory=dict,
        description="flaw kind -> chance the judge reads the edit as if that flaw were absent",
    )
    category_noise: dict[str, float] = Field(
        default_factory=dict, description="operation -> multiplier of the noise (default 1)"
    )
    category_bias: dict[str, float] = Field(
        default_factory=dict,
        description="operation -> score points added to both readings of that operation's "
        "edits, besides bias_* (leniency on that operation; negative: strictness)",
    )
    category_blind_spots: dict[str, float] = Field(
        default_factory=dict,
        description="operation -> multiplier of the blind-spot chances of the flaws an edit "
        "of that operation makes (not of a source defect it inherits; default 1; a chance is "
        "capped at 1)",
    )
    shared: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the error (noise and blind spots) common to all judges per pair",
    )
    pair_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of the judge's own error common to both directions of an image "
        "pair (a forward triplet and its inverse); the rest belongs to the request's content",
    )
    picture_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the judge's own aesthetics error that belongs to the picture "
        "(common to a source and all its edits); the rest belongs to the edited image",
    )
    sample_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="share of the judge's own error drawn afresh per sampled request",
    )
    favourite_scores: tuple[float, ...] = Field(
        (), description="values the judge answers more often than others"
    )
    favourite_share: float = Field(
        0.0, ge=0, le=1, description="chance a reading near a favourite value snaps to it"
    )
    favourite_radius: float = Field(0.3, ge=0, description="how near is near (score points)")
    unwanted_threshold: float = Field(
        4.3, ge=1, le=5, description="yes/no 'no unwanted changes': yes when adherence seems >= it"
    )
    pleasing_threshold: float = Field(
        4.0, ge=1, le=5, description="yes/no 'pleasing': yes when aesthetics seem >= it"
    )
    false_yes: float = Field(0.05, ge=0, le=1, description="chance a 'no' it believes reads yes")
    false_no: float = Field(0.05, ge=0, le=1, description="chance a 'yes' it believes reads no")
    # Comparing two edits side by side (select.best_of: pairwise; docs/simulator.md): the
    # assumptions that can make a comparison better, or worse, than two pointwise scores.
    pairwise_noise: float = Field(
        1.0,
        ge=0,
        description="a side-by-side comparison's score error as a share of the pointwise "
        "error (1: comparing is no more precise than scoring each edit alone)",
    )
    position_bias: float = Field(
        0.1,
        description="score points a comparison adds to the edit shown first (negative: to "
        "the second)",
    )
    pairwise_blind_spots: float = Field(
        1.0,
        ge=0,
        le=1,
        description="in a comparison, multiplier of a blind-spot chance when the other edit "
        "does not have that flaw (1: a flaw is as easy to miss side by side as alone)",
    )

    @field_validator("category_noise", "category_bias", "category_blind_spots")
    @classmethod
    def _known_operations(cls, value: dict[str, float], info) -> dict[str, float]:
        from nhr import taxonomy

        known = taxonomy.OPERATIONS
        for operation, number in value.items():
            if operation not in known:
                raise ValueError(
                    f"{info.field_name}: unknown operation {operation!r}; known: "
                    + ", ".join(sorted(known))
                )
            if not math.isfinite(number):
                raise ValueError(f"{info.field_name}: {operation} must be a finite number")
            if info.field_name != "category_bias" and number < 0:
                raise ValueError(f"{info.field_name}: {operation} must be >= 0, got {number}")
            if info.field_name == "category_bias" and abs(number) > 4:
                raise ValueError(f"category_bias: {operation} must be within -4..4 score points")
        return value


def _profiles() -> dict[str, JudgeProfile]:
    """The named profiles, fitted with benchmarks/judge_realism.py to the rows of the NHR
    paper (arXiv 2507.14119, Table 1 / Table B.1; the tuned validator also to its confusion
    matrices, Figure B.4) as the paper measured them: on calibration.paper_shaped_population()
    against the labels of simulated raters. Targets and tolerances in docs/simulator.md."""
    common_blind = {
        "partial": 0.4,
        "extra_change": 0.15,
        "wrong_target": 0.15,
        "source_defect": 0.45,
        "artefact": 0.4,
        "noise": 0.05,
        "color_drift": 0.1,
    }

    def scaled_blind(factor: float) -> dict[str, float]:
        return {k: round(min(1.0, v * factor), 3) for k, v in common_blind.items()}

    categories = {
        "remove_object": 0.85,
        "add_object": 0.9,
        "style_transfer": 1.3,
        "change_weather": 1.15,
        "time_of_day": 1.1,
        "change_season": 1.15,
        "move_object": 1.2,
        "resize_object": 1.25,
    }
    # How the tuned validator differs by operation. The paper's only per-category figure is
    # the tuned validator's Spearman against human ratings per ImgEdit category (arXiv
    # 2507.14119, Table B.2): replace 0.89, action 0.83, adjust 0.79, remove 0.75, add 0.72,
    # background 0.70, style 0.55 (overall 0.79). The single-operation categories are fitted
    # to it (benchmarks/judge_realism.py); the mechanisms are assumptions (docs/simulator.md).
    # A removal's faint left-over (a shadow, a smudge) is easy to miss. A style or background
    # change alters most of the picture: the judge is noisier there, credits a big plausible
    # change too readily (leniency) and misses side changes hidden in it. An added object is
    # judged on whether something plausible appeared, so a wrong, partial or flawed addition
    # is often read as done (blind spots x 5, noise x 1.8), as with a style transfer (x 5,
    # x 2.4). Other edits change one region, one object or one property the judge can compare
    # directly: fewer misses. The overall adherence noise and the partial / artefact blind
    # spots are fitted together with these, so Table 1 stays within tolerance. The
    # aesthetics error is mostly the judge's opinion of the image itself (noise_correlation
    # 0.2, picture_share 0.7), so an image it liked in one triplet it likes in its inverse and
    # in the composites ending in it; its adherence error is mostly shared by both directions
    # of an image pair (pair_share 0.8).
    tuned_noise = categories | {
        "remove_object": 0.9,
        "add_object": 1.8,
        "change_background": 1.5,
        "style_transfer": 2.4,
    }
    others = (
        "change_color",
        "change_material",
        "replace_object",
        "move_object",
        "resize_object",
        "change_weather",
        "change_season",
        "time_of_day",
    )
    tuned_bias = {"change_background": 0.35, "style_transfer": 0.35}
    tuned_blind = dict.fromkeys(others, 0.5) | {
        "remove_object": 1.5,
        "change_background": 1.5,
        "add_object": 5.0,
        "style_transfer": 5.0,
    }
    return {
        "tuned-gemini-2.0-flash": JudgeProfile(
            noise_adherence=0.36,
            noise_aesthetics=0.505,
            mid_noise_gain=0.48,
            bias_adherence=-0.032,
            bias_aesthetics=0.125,
            noise_correlation=0.2,
            halo=0.118,
            blind_spots={
                "partial": 0.08,
                "extra_change": 0.048,
                "wrong_target": 0.038,
                "source_defect": 0.072,
                "artefact": 0.12,
                "noise": 0.01,
                "color_drift": 0.048,
            },
            category_noise=tuned_noise,
            category_bias=tuned_bias,
            category_blind_spots=tuned_blind,
            shared=0.4,
            pair_share=0.8,
            picture_share=0.7,
            favourite_scores=(4.0, 4.4, 4.8),
            favourite_share=0.162,
            favourite_radius=0.2,
            false_yes=0.1,
            false_no=0.1,
        ),
        "qwen2.5-vl-72b": JudgeProfile(
            noise_adherence=0.725,
            noise_aesthetics=1.243,
            mid_noise_gain=0.117,
            bias_adherence=1.075,
            bias_aesthetics=0.009,
            noise_correlation=0.563,
            halo=0.615,
            blind_spots=scaled_blind(1.55),
            category_noise=categories,
            shared=0.4,
            # its yes/no beliefs as the quickstart's pre-filter; not part of the paper's
            # figures, set with the quickstart world (docs/simulator.md)
            unwanted_threshold=4.175,
            pleasing_threshold=3.75,
            false_yes=0.12,
            false_no=0.2,
        ),
        "gemini-2.5-pro": JudgeProfile(
            noise_adherence=0.825,
            noise_aesthetics=1.47,
            mid_noise_gain=0.0,
            bias_adherence=0.8,
            bias_aesthetics=0.33,
            noise_correlation=0.875,
            halo=0.55,
            blind_spots=scaled_blind(0.046),
            category_noise=categories,
            shared=0.4,
            favourite_scores=(3.0, 4.0, 4.5, 5.0),
            favourite_share=0.515,
            false_yes=0.1,
            false_no=0.12,
        ),
        # A yes-man: reads nearly every edit as done and pretty (precision 0.47, recall 0.93),
        # with wide noise on the mediocre ones it does not simply pass.
        "gemini-2.0-flash": JudgeProfile(
            noise_adherence=0.7,
            noise_aesthetics=1.29,
            mid_noise_gain=1.84,
            bias_adherence=3.48,
            bias_aesthetics=2.68,
            noise_correlation=0.0,
            halo=0.26,
            blind_spots=scaled_blind(2.32),
            category_noise=categories,
            shared=0.4,
            favourite_scores=(4.0, 5.0),
            favourite_share=0.94,
            false_yes=0.3,
            false_no=0.05,
        ),
    }


PROFILES: dict[str, JudgeProfile] = _profiles()


def profile(name: str) -> JudgeProfile:
    """The named profile; a ValueError naming the known ones otherwise."""
    if name not in PROFILES:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown judge profile {name!r}; known profiles: {known}")
    return PROFILES[name]


# --- readings -----------------------------------------------------------------------------


def _mixed(judge: JudgeProfile, shared: float, own: float, fresh: float | None) -> float:
    """One standard normal error: the pair's shared part, the judge's own stable opinion, and,
    when sampled, a part drawn per request."""
    return mixed_error(judge.shared, judge.sample_share, shared, own, fresh)


def mixed_error(
    shared_share: float, sample_share: float, shared: float, own: float, fresh: float | None
) -> float:
    """One standard normal error from standard normal parts: `shared_share` of it common to
    every model (`shared`), the rest the model's own (`own`), of which `sample_share` is drawn
    afresh per sampled request (`fresh`; None: not sampled)."""
    if fresh is not None:
        own = math.sqrt(1.0 - sample_share) * own + math.sqrt(sample_share) * fresh
    return math.sqrt(shared_share) * shared + math.sqrt(1.0 - shared_share) * own


def standard_normal(u: float) -> float:
    """A U[0, 1) draw as a standard normal one."""
    return _NORMAL.inv_cdf(min(max(u, 1e-12), 1.0 - 1e-12))


def normal_cdf(x: float) -> float:
    return _NORMAL.cdf(x)


def unseen_flaws(
    judge: JudgeProfile,
    truth: Assessment,
    name: str,
    pair: bytes,
    sample: bytes | None,
    direction: bytes = b"",
    operations: Sequence[str] = (),
) -> frozenset[str]:
    """The flaw kinds this judge misses on this pair (its blind spots), seen from
    `direction` (see read_scores); `operations` scale the chances (category_blind_spots)."""
    unseen = set()
    share = judge.pair_share
    factor = _per_operation(judge.category_blind_spots, operations, 1.0)
    for kind in sorted(truth.flaws):
        chance = judge.blind_spots.get(kind, 0.0)
        if kind not in SOURCE_FLAWS:  # a flaw of the source is missed alike in every edit
            chance = min(1.0, chance * factor)
        if chance <= 0:
            continue
        shared = rng("blind-shared", pair, kind).gauss(0.0, 1.0)
        own = math.sqrt(share) * rng("blind-own", name, pair, kind).gauss(0.0, 1.0) + math.sqrt(
            1.0 - share
        ) * rng("blind-direction", name, pair, direction, kind).gauss(0.0, 1.0)
        fresh = rng("blind-sample", name, sample, kind).gauss(0.0, 1.0) if sample else None
        if _NORMAL.cdf(_mixed(judge, shared, own, fresh)) < chance:
            unseen.add(kind)
    return frozenset(unseen)


def perceived_scores(
    judge: JudgeProfile,
    truth: Assessment,
    name: str,
    pair: bytes,
    sample: bytes | None,
    direction: bytes = b"",
    operations: Sequence[str] = (),
) -> tuple[float, float]:
    """The scores the judge would give without noise: blind spots and halo applied."""
    unseen = unseen_flaws(judge, truth, name, pair, sample, direction, operations)
    adherence, aesthetics = truth.scores(unseen)
    adherence += judge.halo * max(0.0, aesthetics - adherence)
    return adherence, aesthetics


def read_scores(
    judge: JudgeProfile,
    truth: Assessment,
    operations: list[str],
    name: str,
    pair: bytes,
    sample: bytes | None = None,
    direction: bytes = b"",
    image: bytes = b"",
    picture: bytes = b"",
) -> tuple[float, float]:
    """The judge's (adherence, aesthetics) for one triplet, each with one decimal.

    `name` tells judges apart (the model name), `pair` is a digest of the two images (a
    forward triplet and its inverse share it), `sample` a digest of the request when it is
    sampled (temperature > 0), None otherwise; `direction` a digest of the request's content
    (ordered images and instruction), which tells a forward triplet from its inverse; `image`
    a digest of the edited image and `picture` one of the scene it was drawn from (a source and
    its edits share it), which key the aesthetics error (default: the pair).
    """
    perceived = perceived_scores(judge, truth, name, pair, sample, direction, operations)
    scale = _per_operation(judge.category_noise, operations, 1.0)
    lenient = _per_operation(judge.category_bias, operations, 0.0)
    # Adherence: the judge's opinion of this edit of this pair (mostly shared with the inverse
    # triplet of the same two images).
    common = rng("judge-own", name, pair).gauss(0.0, 1.0)
    this_way = rng("judge-direction", name, pair, direction).gauss(0.0, 1.0)
    share = judge.pair_share
    adherence_error = _mixed(
        judge,
        rng("judge-shared", pair).gauss(0.0, 1.0),
        math.sqrt(share) * common + math.sqrt(1.0 - share) * this_way,
        rng("judge-sample", name, sample).gauss(0.0, 1.0) if sample else None,
    )
    # Aesthetics: the judge's opinion of the edited image itself, whatever triplet it is in (a
    # forward, its inverse and a composite ending in that image are seen alike), optionally
    # partly of the picture all edits of one source share (`picture_share`); correlated with
    # the adherence error at `noise_correlation`.
    image = image or pair
    picture = picture or image
    alike = judge.picture_share
    own_image = math.sqrt(alike) * rng("judge-own-picture", name, picture).gauss(
        0.0, 1.0
    ) + math.sqrt(1.0 - alike) * rng("judge-own-image", name, image).gauss(0.0, 1.0)
    image_error = _mixed(
        judge,
        rng("judge-shared-picture", picture).gauss(0.0, 1.0),
        own_image,
        rng("judge-sample-image", name, sample).gauss(0.0, 1.0) if sample else None,
    )
    rho = judge.noise_correlation
    errors = (adherence_error, rho * adherence_error + math.sqrt(1.0 - rho**2) * image_error)
    snaps = (
        rng("judge-favourite", name, pair, direction, sample).random(),
        rng("judge-favourite-image", name, image, sample).random(),
    )
    readings = []
    biases = (judge.bias_adherence + lenient, judge.bias_aesthetics + lenient)
    widths = (judge.noise_adherence, judge.noise_aesthetics)
    for value, bias, width, error, snap in zip(perceived, biases, widths, errors, snaps):
        mid = 1.0 + judge.mid_noise_gain * max(0.0, 1.0 - abs(value - 3.0) / 2.0)
        reading = min(5.0, max(1.0, value + bias + width * scale * mid * error))
        readings.append(_favour(judge, reading, snap))
    return readings[0], readings[1]


def _per_operation(table: dict[str, float], operations: Sequence[str], default: float) -> float:
    """A per-operation setting for an edit: the mean over its operations (a composite edit is
    as hard as its parts on average); `default` for an operation the table does not name."""
    if not operations:
        return default
    return sum(table.get(op, default) for op in operations) / len(operations)


def _favour(judge: JudgeProfile, reading: float, u: float) -> float:
    if judge.favourite_scores and u < judge.favourite_share:
        nearest = min(judge.favourite_scores, key=lambda v: abs(v - reading))
        if abs(nearest - reading) <= judge.favourite_radius + 1e-9:
            return nearest
    return round(reading, 1)


def read_yes_no(judge: JudgeProfile, believed: bool, name: str, key: bytes, task: str) -> bool:
    """A yes/no answer: what the judge believes, turned over at its false-yes or false-no
    rate (drawn per request)."""
    u = rng("judge-yes-no", name, task, key).random()
    if believed:
        return u >= judge.false_no
    return u < judge.false_yes
