"""The simulated vision-language judge: gate, scores, unwanted changes, aesthetics.

It recognises the task from the prompt text (the templates in nhr/prompts), reads the true
scene graphs from the images and answers from them plus calibrated noise. Like a real judge
it sees only the images and the instruction, so a phantom removal looks perfect to it.
"""

from __future__ import annotations

import hashlib
import math
import re

from nhr.backends.base import BackendError, PermanentBackendError, VisionRequest
from nhr.backends.sim import judges, photos
from nhr.backends.sim.config import SimBackendConfig
from nhr.backends.sim.grammar import parse_instruction, parse_prompt
from nhr.backends.sim.render import read_meta
from nhr.backends.sim.tasks import BENCH_TASKS, EDIT_INSTRUCTION, criteria, vision_task
from nhr.backends.sim.truth import Assessment, aesthetic_penalties, aesthetics, assess
from nhr.backends.sim.world import Scene, digest, rng, scene_defects, uniform

_INSTRUCTION = re.compile(r"^\s*Instruction:\s*(.+?)\s*$", re.MULTILINE)
_PROMPT = re.compile(r"Text-to-image prompt:\s*(.+?)\s*$", re.MULTILINE)
# The answer to a request filled from none of the vision templates (see tasks.py).
UNKNOWN_TASK_ANSWER = "I can only judge images for image-editing data."
_YES = ("Yes", "Yes", "Yes.", "yes", "Yes")
_NO = ("No", "No", "No.", "no", "No")


def detect_task(text: str) -> str:
    """Which template a vision prompt was filled from: score, unwanted, gate, aesthetic,
    pairwise, or a benchmark's (tasks.vision_task)."""
    return vision_task(text)


def request_key(request: VisionRequest) -> bytes:
    """Content digest of a request; the seed only matters when sampling (temperature > 0)."""
    seed = request.seed if request.temperature > 0 else None
    return digest("vision", request.system, request.prompt, seed, *request.images)


def _pair_normals(correlation: float, *parts: object) -> tuple[float, float]:
    """Two standard normals with the given correlation, keyed by `parts`."""
    r = rng(*parts)
    first, second = r.gauss(0.0, 1.0), r.gauss(0.0, 1.0)
    return first, correlation * first + math.sqrt(1.0 - correlation**2) * second


def observe_scores(
    true: tuple[float, float], config: SimBackendConfig, pair: tuple[bytes, ...], key: bytes
) -> tuple[float, float]:
    """Noisy readings of (adherence, aesthetics), each rounded to one decimal.

    The noise has a part keyed by the image pair (the judge's stable opinion of it, shared by
    a forward triplet and its inverse) and a part keyed by the whole request; the two scores'
    noises are correlated (a halo effect). Where a reading would leave the 1-5 scale the
    noise's sign is flipped instead of clipping it, so the mean absolute error stays
    score_noise * sqrt(2/pi) (0.62 -> 0.50, 1.2 -> 0.96) whatever the mix of true scores;
    a perfect edit therefore reads 5 minus a half-normal error.
    """
    share = config.item_noise_share
    rho = config.score_correlation
    item = _pair_normals(rho, "score-item", config.model, *pair)
    fresh = _pair_normals(rho, "score-request", config.model, key)
    sigmas = (config.score_noise, config.score_noise * config.aesthetic_noise_ratio)
    readings = []
    for value, sigma, a, b in zip(true, sigmas, item, fresh):
        noise = sigma * (math.sqrt(share) * a + math.sqrt(1.0 - share) * b)
        reading = value + noise
        if not 1.0 <= reading <= 5.0:
            reading = value - noise
        readings.append(round(min(5.0, max(1.0, reading)), 1))
    return readings[0], readings[1]


def answer(request: VisionRequest, config: SimBackendConfig) -> str | BackendError:
    text = f"{request.system or ''}\n{request.prompt}"
    task = detect_task(text)
    key = request_key(request)
    if task == "unknown":
        return UNKNOWN_TASK_ANSWER
    if not request.images:
        return PermanentBackendError("invalid_request", "no image given")
    if task in ("score", "unwanted", "gedit_sc", "imgedit") and len(request.images) < 2:
        return PermanentBackendError("invalid_request", f"{task} needs the original and the edit")
    if task == "pairwise" and len(request.images) < 3:
        return PermanentBackendError("invalid_request", "pairwise needs the original and 2 edits")
    if task == "describe":
        return photos.describe(request.images[0], key, config)
    if task == "gate":
        match = _PROMPT.search(text)
        return _yes_no(_gate(request, match.group(1) if match else "", config), key, config)
    profile = config.judge_profile()
    sample = key if request.temperature > 0 else None
    if task in BENCH_TASKS:
        return _bench_answer(task, request, text, key, sample, profile, config)
    if task == "pairwise":
        return _pairwise_answer(request, text, key, profile, config)
    if task == "aesthetic":
        scene = _scene(request.images[-1])
        if profile is None:
            value = aesthetics(scene) if scene else 3.0
            return _yes_no(value >= 4.0, key, config)
        if scene is None:
            return _profile_yes_no(False, profile, config, key, task)
        alone = Assessment(parsed=True, aesthetics_penalties=aesthetic_penalties(scene))
        image = hashlib.sha256(request.images[-1]).digest()
        _, seen = judges.perceived_scores(profile, alone, config.model, image, sample)
        return _profile_yes_no(seen >= profile.pleasing_threshold, profile, config, key, task)

    match = _INSTRUCTION.search(text)
    instruction = match.group(1) if match else ""
    before, after = _scene(request.images[0]), _scene(request.images[1])
    pair = tuple(sorted(hashlib.sha256(image).digest() for image in request.images[:2]))
    result = _truth(before, after, instruction)
    adherence, aesthetic = result.adherence, result.aesthetics
    if profile is not None:
        pair_key = b"".join(pair)
        direction = digest(request.images[0], request.images[1], instruction)
        if task == "unwanted":
            seen, _ = judges.perceived_scores(
                profile, result, config.model, pair_key, sample, direction
            )
            clean = seen >= profile.unwanted_threshold
            return _profile_yes_no(clean, profile, config, key, task)
        operations = [clause.op for clause in parse_instruction(instruction)]
        # the aesthetics error belongs to the edited image of the pair: the inverse triplet of
        # an edit (edited -> source) is the same edit seen backwards
        edited = request.images[0] if _generated(request.images[1]) else request.images[1]
        image = hashlib.sha256(edited).digest()
        picture = b"" if after is None else digest("picture", after.texture_seed)
        readings = judges.read_scores(
            profile, result, operations, config.model, pair_key, sample, direction, image, picture
        )
        return f'{{"InstructionAdherence": {readings[0]}, "ImageAesthetic": {readings[1]}}}'
    if task == "unwanted":
        return _yes_no(adherence >= 4.5, key, config)
    observed_adh, observed_aes = observe_scores((adherence, aesthetic), config, pair, key)
    return f'{{"InstructionAdherence": {observed_adh}, "ImageAesthetic": {observed_aes}}}'


def _pairwise_answer(
    request: VisionRequest,
    text: str,
    key: bytes,
    profile: judges.JudgeProfile | None,
    config: SimBackendConfig,
) -> str:
    """The answer to prompts/pairwise.txt: which of two edits of the same original (edit A,
    shown first, and edit B) is better.

    The judge reads each edit as it reads it pointwise (the same profile: blind spots, halo,
    bias, the same pair and image keys, so mostly the same opinion), except that a comparison
    is a request of its own, so the sampled share of its error and of its blind-spot draws is
    drawn afresh per comparison, and for what the profile says about comparing
    (docs/simulator.md): its error is `pairwise_noise` times the pointwise one, a flaw the
    other edit does not have is missed `pairwise_blind_spots` times as often as alone (both 1
    by default: comparing is no sharper than scoring), and the edit shown first gains
    `position_bias` points. The better edit is the one with the higher geometric
    mean of its two readings. The plain judge (no profile) compares its pointwise readings."""
    match = _INSTRUCTION.search(text)
    instruction = match.group(1) if match else ""
    source = request.images[0]
    side = None
    if profile is not None:
        side = profile.model_copy(
            update={
                "noise_adherence": profile.noise_adherence * profile.pairwise_noise,
                "noise_aesthetics": profile.noise_aesthetics * profile.pairwise_noise,
                "favourite_share": 0.0,  # no answer is written down: nothing to round to
            }
        )
    edits = request.images[1:3]
    before = _scene(source)
    afters = [_scene(edited) for edited in edits]
    truths = [_truth(before, after, instruction) for after in afters]
    operations = [clause.op for clause in parse_instruction(instruction)]
    utilities = []
    for position, (edited, after, result) in enumerate(zip(edits, afters, truths)):
        pair = tuple(sorted(hashlib.sha256(image).digest() for image in (source, edited)))
        if side is None:
            readings = observe_scores((result.adherence, result.aesthetics), config, pair, key)
        else:
            other = truths[1 - position].flaws
            contrast = profile.pairwise_blind_spots
            seen_by = side.model_copy(
                update={
                    "blind_spots": {
                        kind: chance if kind in other else chance * contrast
                        for kind, chance in side.blind_spots.items()
                    }
                }
            )
            readings = judges.read_scores(
                seen_by,
                result,
                operations,
                config.model,
                b"".join(pair),
                digest(key, edited),  # this comparison's own draw for this edit
                digest(source, edited, instruction),  # as in the pointwise request
                hashlib.sha256(edited).digest(),
                b"" if after is None else digest("picture", after.texture_seed),
            )
        utility = math.sqrt(readings[0] * readings[1])
        if position == 0 and side is not None:
            utility += side.position_bias
        utilities.append(utility)
    better = "A" if utilities[0] >= utilities[1] else "B"
    return f'{{"BetterEdit": "{better}"}}'


# Flaw kinds that are changes nobody asked for: what GEdit's over-editing score is about.
UNWANTED_KINDS = ("extra_change", "wrong_target", "color_drift")


def _bench_answer(
    task: str,
    request: VisionRequest,
    text: str,
    key: bytes,
    sample: bytes | None,
    profile: judges.JudgeProfile | None,
    config: SimBackendConfig,
) -> str:
    """An answer to a benchmark judge prompt (nhr/bench), read off the same judge as nhr's own
    templates: the 1-5 (adherence, aesthetics) reading of the profile (or the plain judge),
    with its noise and blind spots, mapped onto the benchmark's scale.

    GEdit semantic consistency: editing success is the adherence reading, over-editing the
    adherence reading of the unwanted changes alone (UNWANTED_KINDS); perceptual quality: the
    aesthetics reading of the edited image alone, for both naturalness and artefacts. ImgEdit:
    the first criterion is adherence, the others min(adherence, aesthetics)."""
    if task == "gedit_pq":
        png = request.images[-1]
        scene = _scene(png)
        image = hashlib.sha256(png).digest()
        if scene is None:
            value = 3.0  # no truth to read: an undecided judge
        else:
            alone = Assessment(parsed=True, aesthetics_penalties=aesthetic_penalties(scene))
            if profile is None:
                value = observe_scores((alone.aesthetics,) * 2, config, (image,), key)[1]
            else:
                picture = digest("picture", scene.texture_seed)
                value = judges.read_scores(
                    profile, alone, [], config.model, image, sample, b"", image, picture
                )[1]
        score = _on_ten(value)
        return f'{{"score": [{score}, {score}], "reasoning": "simulated perceptual quality"}}'

    match = EDIT_INSTRUCTION.search(text)
    instruction = match.group(1) if match else ""
    before, after = _scene(request.images[0]), _scene(request.images[1])
    pair = tuple(sorted(hashlib.sha256(image).digest() for image in request.images[:2]))
    result = _truth(before, after, instruction)
    unwanted = Assessment(
        parsed=result.parsed,
        adherence_penalties={
            kind: value
            for kind, value in result.adherence_penalties.items()
            if kind in UNWANTED_KINDS
        },
        aesthetics_penalties=result.aesthetics_penalties,
    )
    if profile is None:
        adherence, aesthetic = observe_scores(
            (result.adherence, result.aesthetics), config, pair, key
        )
        over, _ = observe_scores(
            (unwanted.adherence, unwanted.aesthetics), config, pair, digest(key, "over-editing")
        )
    else:
        pair_key = b"".join(pair)
        direction = digest(request.images[0], request.images[1], instruction)
        operations = [clause.op for clause in parse_instruction(instruction)]
        image = hashlib.sha256(request.images[1]).digest()
        picture = b"" if after is None else digest("picture", after.texture_seed)

        def read(truth: Assessment, way: bytes) -> tuple[float, float]:
            return judges.read_scores(
                profile, truth, operations, config.model, pair_key, sample, way, image, picture
            )

        adherence, aesthetic = read(result, direction)
        over, _ = read(unwanted, digest(direction, "over-editing"))
    if task == "gedit_sc":
        scores = f"[{_on_ten(adherence)}, {_on_ten(over)}]"
        return f'{{"score": {scores}, "reasoning": "simulated semantic consistency"}}'
    values = [adherence, min(adherence, aesthetic), min(adherence, aesthetic)]
    lines = [
        f"{name}: {_on_five(value)}" for name, value in zip(criteria(text), values, strict=False)
    ]
    return "Brief reasoning: simulated reading of the edit.\n" + "\n".join(lines)


def _on_ten(value: float) -> int:
    """A 1-5 reading on a 0-10 scale."""
    return max(0, min(10, round(2.5 * (value - 1.0))))


def _on_five(value: float) -> int:
    return max(1, min(5, round(value)))


def _generated(png: bytes) -> bool:
    meta = read_meta(png)
    return bool(meta) and meta.get("kind") in ("generated", "photo")  # a source image


def _truth(before: Scene | None, after: Scene | None, instruction: str) -> Assessment:
    """What the edit truly did; with no scene to read on either side, an undecided reading
    (adherence 2.5, aesthetics 3.5)."""
    if before is None or after is None:
        return Assessment(
            parsed=False,
            adherence_penalties={"unparsed": 2.5},
            aesthetics_penalties={"unparsed": 1.5},
        )
    return assess(before, after, instruction)


def _scene(png: bytes) -> Scene | None:
    meta = read_meta(png)
    if not meta or not meta.get("scene"):
        return None
    return Scene.from_dict(meta["scene"])


def _gate(request: VisionRequest, prompt: str, config: SimBackendConfig) -> bool:
    """True (plausible and on-prompt) unless the judge notices one of the image's defects."""
    png = request.images[0]
    scene = _scene(png)
    if scene is None:
        return False
    defects = scene_defects(scene)
    spec = parse_prompt(prompt)
    if not scene.unparsed and not spec.empty:
        shown = {o.name for o in scene.objects if o.dup_of is None and o.ghost_of is None}
        asked = {o.name for o in spec.objects}
        if asked != shown | {o.name for o in scene.missing} or (
            spec.background and spec.background != scene.background
        ):
            defects.append("off_prompt")
    # the greedy request's key: a sampled request keeps most of the greedy answer's opinion
    greedy = digest("vision", request.system, request.prompt, None, *request.images)
    sample = request_key(request) if request.temperature > 0 else None
    image = hashlib.sha256(png).digest()
    return not any(
        _notices(config, greedy, sample, image, index, defect)
        for index, defect in enumerate(defects)
    )


def _notices(
    config: SimBackendConfig,
    key: bytes,
    sample: bytes | None,
    image: bytes,
    index: int,
    defect: str,
) -> bool:
    """Whether the gate notices one defect: it does with chance `defect_detection`, from an
    error made of parts as a judge's (judges.py): a part common to every gate model on this
    image (`gate_shared`: a defect one model misses is subtle for the others too), the model's
    own stable opinion of the request and, when sampled, `gate_sample_share` of that own part
    drawn afresh per request. So K samples or a second gate model catch some of the defects a
    greedy answer misses, not all. With no shared part and no sampling it is one draw per
    request and defect, as before these settings existed."""
    own = uniform("gate", config.model, key, index, defect)
    if sample is None and config.gate_shared == 0:
        return own < config.defect_detection
    normal = judges.standard_normal
    fresh = None
    if sample is not None:
        fresh = normal(uniform("gate-sample", config.model, sample, index, defect))
    error = judges.mixed_error(
        config.gate_shared,
        config.gate_sample_share,
        normal(uniform("gate-shared", image, defect)),
        normal(own),
        fresh,
    )
    return judges.normal_cdf(error) < config.defect_detection


def _profile_yes_no(
    believed: bool, profile: judges.JudgeProfile, config: SimBackendConfig, key: bytes, task: str
) -> str:
    value = judges.read_yes_no(profile, believed, config.model, key, task)
    return rng("form", config.model, key).choice(_YES if value else _NO)


def _yes_no(value: bool, key: bytes, config: SimBackendConfig) -> str:
    if uniform("flip", config.model, key) < config.yes_no_flip:
        value = not value
    return rng("form", config.model, key).choice(_YES if value else _NO)
