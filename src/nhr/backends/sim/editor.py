"""The simulated instruction editor.

It reads the source scene from the image metadata, parses the instruction into clauses, draws
one outcome per attempt from the configured error rates and re-renders the edited scene at
the source's size. Because pixels are a function of the scene, an edit changes exactly the
pixels a real editor's edit of the same kind would change; a small VAE-like perturbation is
added everywhere, so an output is never byte-identical to its input.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np

from nhr.backends.sim.config import SimEditorErrors
from nhr.backends.sim.grammar import Clause, parse_instruction, resolve
from nhr.backends.sim.render import decode_pixels, encode_png, open_png, read_meta, render
from nhr.backends.sim.world import (
    ATTR_VALUES,
    COLORS,
    MATERIALS,
    OBJECT_NAMES,
    SIZES,
    SLOTS,
    Obj,
    Scene,
    digest,
    new_size,
    rng,
    scene_defects,
)

OUTCOMES: tuple[str, ...] = (
    "noop",
    "wrong_target",
    "extra_change",
    "artefact",
    "noise",
    "color_drift",
    "partial",
)
_GARISH: tuple[tuple[int, int, int], ...] = (
    (255, 0, 200),
    (0, 255, 120),
    (255, 110, 0),
    (120, 0, 255),
    (0, 220, 255),
)


def draw_outcome(u: float, errors: SimEditorErrors) -> str:
    """Map one U[0, 1) draw to an outcome; rates are taken in OUTCOMES order, the rest is
    "correct" (if the rates add up to more than 1, the last ones are cut short)."""
    total = 0.0
    for name in OUTCOMES:
        total += getattr(errors, name)
        if u < total:
            return name
    return "correct"


def edit_png(
    data: bytes, instruction: str, seed: int, errors: SimEditorErrors, model: str
) -> bytes:
    """The edited image (PNG bytes, same size as the input) for one edit request."""
    image = open_png(data)
    width, height = image.size
    rnd = rng("edit", model, seed, digest(data), instruction)
    meta = read_meta(data)
    if not meta or not meta.get("scene"):
        return _edit_foreign(data, rnd)
    source = Scene.from_dict(meta["scene"])
    clauses = parse_instruction(instruction)
    outcome = draw_outcome(rnd.random(), errors) if clauses else "unparsed"
    scene, effects = apply_edit(source, clauses, outcome, rnd, errors)
    scene.perturb_seed = rnd.getrandbits(31)
    pixels = render(scene, width, height)
    record = {
        "v": 1,
        "kind": "edited",
        "scene": scene.to_dict(),
        "defects": scene_defects(scene),
        "instruction": instruction,
        "outcome": outcome,
        "effects": effects,
    }
    return encode_png(pixels, record)


def _edit_foreign(data: bytes, rnd: random.Random) -> bytes:
    """An image without simulator metadata: return it with only the round-trip noise."""
    pixels = decode_pixels(data).astype(np.int16)
    noise = np.random.default_rng(rnd.getrandbits(32)).integers(-3, 4, pixels.shape[:2] + (1,))
    out = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    return encode_png(
        out, {"v": 1, "kind": "edited", "scene": None, "outcome": "no_scene", "effects": []}
    )


def draw_flaw_size(rnd: random.Random, errors: SimEditorErrors) -> float:
    """How far one flaw goes, in (0, 1]: a minor one (a faint left-over shadow, a small
    side change) with probability `minor_share`, else a plain one."""
    if rnd.random() < errors.minor_share:
        return round(rnd.uniform(0.03, 0.3), 3)
    return round(rnd.uniform(0.3, 1.0), 3)


def apply_edit(
    source: Scene,
    clauses: list[Clause],
    outcome: str,
    rnd: random.Random,
    errors: SimEditorErrors | None = None,
) -> tuple[Scene, list[dict[str, Any]]]:
    """The edited scene for one outcome, and a record of what was done."""
    errors = errors or SimEditorErrors()
    scene = source.copy()
    scene.perturb_seed = None
    scene.flaw_size = {}
    effects: list[dict[str, Any]] = []
    if outcome in ("noop", "unparsed"):
        return scene, [{"outcome": outcome}]
    # every edit that does something leaves small imperfections (a soft seam, a slightly
    # off texture): correct edits are not all a perfect 5 to a careful rater
    if errors.finish > 0:
        own = min(0.7, rnd.expovariate(1.0 / errors.finish))
        scene.finish = round(source.finish + own, 3)
    size = draw_flaw_size(rnd, errors) if outcome != "correct" else 1.0
    if outcome != "correct":
        scene.flaw_size[outcome] = size
    todo = list(clauses)
    partial_index: int | None = None
    if outcome == "partial":
        if len(todo) > 1:
            dropped = todo.pop(rnd.randrange(len(todo)))
            effects.append({"dropped": dropped.op})
            scene.flaw_size[outcome] = size = 1.0  # a whole clause left undone is no near-miss
        else:
            partial_index = 0
    noise_only = outcome == "noise" and rnd.random() < 0.5
    touched: set[int] = set()
    if not noise_only:
        for index, clause in enumerate(todo):
            mode = (
                "partial"
                if index == partial_index
                else "wrong"
                if outcome == "wrong_target" and index == 0
                else "correct"
            )
            effects.append(_apply(scene, clause, mode, rnd, touched, size))
    if outcome == "extra_change":
        effects.append(_extra_change(scene, clauses, touched, rnd))
    elif outcome == "artefact":
        scene.marks.append(
            {
                "kind": "blob",
                "x": round(rnd.uniform(0.15, 0.85), 4),
                "y": round(rnd.uniform(0.2, 0.85), 4),
                "r": round(0.025 + 0.085 * size, 4),  # a small one is a minor inpainting flaw
                "color": list(rnd.choice(_GARISH)),
                "seed": rnd.getrandbits(31),
            }
        )
    elif outcome == "noise":
        scene.marks.append({"kind": "speckle", "seed": rnd.getrandbits(31), "density": 0.12})
        effects.append({"noise_only": noise_only})
    elif outcome == "color_drift":
        base = rnd.choice(((30, -12, -22), (-22, 8, 32), (18, 26, -24), (-26, -20, 14)))
        scale = 0.3 + 0.8 * size
        scene.drift = [int(round(v * scale)) for v in base]
    effects.append({"outcome": outcome})
    return scene, effects


def _other(pool: tuple[str, ...] | list[str], rnd: random.Random, *avoid: str | None) -> str:
    options = [v for v in pool if v not in avoid]
    return rnd.choice(options or list(pool))


def _fresh_id(scene: Scene, rnd: random.Random) -> int:
    """A random id for an object the editor creates. Two edits of the same source must not
    give different new objects the same id, or a composed triplet would mistake one for the
    other."""
    used = {o.id for o in scene.objects}
    while True:
        candidate = rnd.randrange(1000, 1 << 30)
        if candidate not in used:
            return candidate


def _remove(scene: Scene, obj: Obj) -> None:
    scene.objects = [o for o in scene.objects if o.id != obj.id and o.ghost_of != obj.id]


def _apply(
    scene: Scene,
    clause: Clause,
    mode: str,
    rnd: random.Random,
    touched: set[int],
    size: float = 1.0,
) -> dict[str, Any]:
    """Carry out one clause: "correct", "partial" (part done; `size` says how much is left
    undone) or "wrong" (wrong target)."""
    effect: dict[str, Any] = {"op": clause.op, "mode": mode}
    if clause.changes:
        old = {attr: getattr(scene, attr) for attr, _ in clause.changes}
        for attr, value in clause.changes:
            if mode == "wrong":
                value = _other(ATTR_VALUES[attr], rnd, value, old[attr])
            setattr(scene, attr, value)
        if mode == "partial":
            scene.blend = {"attrs": old, "weight": round(0.15 + 0.5 * size, 3)}
        return effect
    ref = clause.ref
    assert ref is not None
    if clause.op == "add_object":
        name = ref.name
        if mode == "wrong":
            name = _other(OBJECT_NAMES, rnd, name, *[o.name for o in scene.objects])
        free = scene.free_slots()
        obj = Obj(
            id=_fresh_id(scene, rnd),
            name=name,
            color=ref.color or rnd.choice(list(COLORS)),
            material=ref.material or "plain",
            size=ref.size or "medium",
            slot=ref.slot or (rnd.choice(free) if free else "center"),
            jx=round(rnd.uniform(-0.03, 0.03), 4),
            jy=round(rnd.uniform(-0.03, 0.03), 4),
            fade=round(0.75 - 0.4 * size, 3) if mode == "partial" else 1.0,
        )
        scene.objects.append(obj)
        touched.add(obj.id)
        return effect | {"id": obj.id}

    target = resolve(ref, scene.solid())
    if target is None:
        if clause.op == "remove_object":
            # Phantom removal: nothing is there, but the editor still repaints the place
            # where the instruction says it was. The result looks clean.
            x, y = SLOTS.get(ref.slot or "center", (0.5, 0.56))
            scene.marks.append(
                {"kind": "retexture", "x": x, "y": y, "r": 0.11, "seed": rnd.getrandbits(31)}
            )
            return effect | {"phantom": True}
        return effect | {"target_absent": True}
    others = [o for o in scene.solid() if o.id != target.id and o.id not in touched]
    if mode == "wrong" and others and (clause.op == "remove_object" or rnd.random() < 0.6):
        target = rnd.choice(others)
        mode = "correct_on_wrong"
        effect["mode"] = "wrong"
    touched.add(target.id)
    effect["id"] = target.id
    wrong_value = mode == "wrong"

    if clause.op == "remove_object":
        if wrong_value:  # nothing else to remove: the editor recolours the target instead
            target.color = _other(list(COLORS), rnd, target.color)
        elif mode == "partial":
            target.fade = round(0.08 + 0.5 * size, 3)  # small: a faint left-over shadow
        else:
            _remove(scene, target)
    elif clause.op == "change_color":
        color = clause.value or target.color
        if wrong_value or color == target.color:
            color = _other(list(COLORS), rnd, clause.value, target.color)
        if mode == "partial":
            target.tint = target.color
        target.color = color
    elif clause.op == "change_material":
        material = clause.value or target.material
        if wrong_value or material == target.material:
            material = _other(MATERIALS, rnd, clause.value, target.material)
        target.material = material
        if mode == "partial":
            target.mat_strength = round(0.9 - 0.6 * size, 3)
    elif clause.op == "resize_object":
        size = new_size(target.size, clause.value)
        if wrong_value or size == target.size:
            size = _other(SIZES, rnd, size, target.size)
        if mode == "partial":
            target.scale = 1.25 if SIZES.index(size) > SIZES.index(target.size) else 0.8
        else:
            target.size = size
    elif clause.op == "move_object":
        slot = clause.value or target.slot
        if wrong_value or slot == target.slot:
            slot = _other(scene.free_slots() or list(SLOTS), rnd, clause.value, target.slot)
        if mode == "partial":
            scene.objects.append(
                dataclasses.replace(
                    target,
                    id=_fresh_id(scene, rnd),
                    fade=round(0.08 + 0.4 * size, 3),
                    ghost_of=target.id,
                )
            )
        target.slot = slot
        target.jx, target.jy = (
            round(rnd.uniform(-0.03, 0.03), 4),
            round(rnd.uniform(-0.03, 0.03), 4),
        )
    elif clause.op == "replace_object":
        name = clause.value or target.name
        if wrong_value or name == target.name:
            name = _other(OBJECT_NAMES, rnd, clause.value, target.name)
        if mode == "partial":
            target.blend_name = target.name
        target.name = name
        if clause.new_color and not wrong_value:
            target.color = clause.new_color
    return effect


def _extra_change(
    scene: Scene, clauses: list[Clause], touched: set[int], rnd: random.Random
) -> dict[str, Any]:
    """One change nobody asked for: recolour an untouched object, else shift the season."""
    others = [o for o in scene.solid() if o.id not in touched]
    if others:
        obj = rnd.choice(others)
        obj.color = _other(list(COLORS), rnd, obj.color)
        return {"extra": "recolor", "id": obj.id}
    asked = {attr for clause in clauses for attr, _ in clause.changes}
    attr = next(a for a in ("season", "weather", "time", "style") if a not in asked)
    setattr(scene, attr, _other(ATTR_VALUES[attr], rnd, getattr(scene, attr)))
    return {"extra": attr}
