"""The simulated text-to-image model: prompt text -> scene -> PNG with its truth embedded.

It reads the prompt with the same grammar the design LLM writes (unknown words are ignored),
lays the scene out with seed-dependent jitter and draws defects at the configured rates. A
dropped object matters most: a later "remove the X" then succeeds without doing anything,
and only the inverse "add the X" shows that the triplet is wrong.
"""

from __future__ import annotations

import dataclasses
import random

from nhr.backends.sim.config import SimGeneratorErrors
from nhr.backends.sim.grammar import PromptSpec, Ref, parse_prompt
from nhr.backends.sim.render import encode_png, render
from nhr.backends.sim.world import (
    BACKGROUNDS,
    COLORS,
    DEFAULT_SEASON,
    DEFAULT_STYLE,
    DEFAULT_TIME,
    DEFAULT_WEATHER,
    OBJECT_NAMES,
    Obj,
    Scene,
    rng,
    scene_defects,
)

MIN_SIDE = 8  # rendered images are at least this many pixels on each side


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def build_scene(spec: PromptSpec, rnd: random.Random) -> Scene:
    """The scene a prompt describes, with defaults and a seed-dependent layout (no defects)."""
    scene = Scene(
        background=spec.background or rnd.choice(list(BACKGROUNDS)),
        time=spec.time or DEFAULT_TIME,
        season=spec.season or DEFAULT_SEASON,
        weather=spec.weather or DEFAULT_WEATHER,
        style=spec.style or DEFAULT_STYLE,
        texture_seed=rnd.getrandbits(31),
    )
    refs = list(spec.objects)
    if spec.empty:
        # Nothing readable: draw a plausible default scene and say so in the metadata.
        scene.unparsed = True
        refs = _default_refs(rnd)
    for ref in refs:
        free = scene.free_slots()
        slot = ref.slot if ref.slot in free else (rnd.choice(free) if free else "center")
        scene.objects.append(
            Obj(
                id=scene.new_id(),
                name=ref.name,
                color=ref.color or rnd.choice(list(COLORS)),
                material=ref.material or "plain",
                size=ref.size or "medium",
                slot=slot,
                jx=round(rnd.uniform(-0.035, 0.035), 4),
                jy=round(rnd.uniform(-0.035, 0.035), 4),
            )
        )
    return scene


def _default_refs(rnd: random.Random) -> list[Ref]:
    names = rnd.sample(OBJECT_NAMES, rnd.randint(1, 3))
    return [Ref(name=n) for n in names]


def add_defects(scene: Scene, rnd: random.Random, errors: SimGeneratorErrors) -> None:
    """Draw each defect independently at its rate and apply it to the scene."""
    if scene.objects and rnd.random() < errors.missing_object:
        victim = rnd.choice(scene.objects)
        scene.objects.remove(victim)
        scene.missing.append(victim)
    if scene.objects and scene.free_slots() and rnd.random() < errors.duplicate_object:
        original = rnd.choice(scene.objects)
        scene.objects.append(
            dataclasses.replace(
                original,
                id=scene.new_id(),
                slot=rnd.choice(scene.free_slots()),
                jx=round(rnd.uniform(-0.035, 0.035), 4),
                jy=round(rnd.uniform(-0.035, 0.035), 4),
                dup_of=original.id,
            )
        )
    originals = [o for o in scene.objects if o.dup_of is None]
    if originals and rnd.random() < errors.garbled_object:
        rnd.choice(originals).garbled = True
    if rnd.random() < errors.implausible:
        scene.implausible = True
    if errors.roughness > 0:  # generated images are not all equally pretty
        scene.finish = round(rnd.uniform(0.0, 2.0 * errors.roughness), 3)


def generate_png(
    prompt: str,
    width: int,
    height: int,
    seed: int,
    scale: float,
    errors: SimGeneratorErrors,
    model: str,
) -> bytes:
    """One generated source image for (prompt, size, seed)."""
    rnd = rng("generate", model, seed, prompt)
    scene = build_scene(parse_prompt(prompt), rnd)
    add_defects(scene, rnd, errors)
    w, h = output_size(width, height, scale)
    record = {
        "v": 1,
        "kind": "generated",
        "prompt": prompt,
        "seed": seed,
        "scene": scene.to_dict(),
        "defects": scene_defects(scene),
    }
    return encode_png(render(scene, w, h), record)
