"""The catalogue of edit operations (docs/method.md §6): removal, addition and 27 others.

Each operation has a stable key (used in configs and rows), a human label (the dataset's
`category`), a group, the operation that undoes it (used by inversion), whether it is local
or global (global edits legitimately change every pixel, so the low-level connected-component
check is skipped for them), and the guidance the design LLM receives for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Operation:
    key: str
    label: str
    group: str
    inverse: str
    is_global: bool
    guidance: str


def _op(
    key: str, label: str, group: str, inverse: str, is_global: bool, guidance: str
) -> Operation:
    return Operation(key, label, group, inverse, is_global, guidance)


_OPERATIONS: tuple[Operation, ...] = (
    _op(
        "remove_object",
        "Remove object",
        "object",
        "add_object",
        False,
        "Name 1 to 5 clearly visible objects of the prompt, one removal edit per object. Edits are "
        'independent of each other and use descriptive spatial references ("the lamp beside the '
        'sofa"), never ordinals. Casual phrasing is welcome. Spread the number of named objects '
        "evenly over 1..5 across the batch. When 2 or more objects are named, the last edit is one "
        'composite removal of all of them (mark it "composite": true).',
    ),
    _op(
        "add_object",
        "Add object",
        "object",
        "remove_object",
        False,
        "Add one new object that fits the scene, saying what it is, its colour, size and where it "
        "goes relative to things already in the scene. One addition per edit.",
    ),
    _op(
        "replace_object",
        "Change object",
        "object",
        "replace_object",
        False,
        "Replace one named object of the prompt by a different object of similar size, keeping "
        "its position.",
    ),
    _op(
        "change_color",
        "Change colour",
        "appearance",
        "change_color",
        False,
        "Change the colour of one named object to a clearly different colour.",
    ),
    _op(
        "change_material",
        "Change material/texture",
        "appearance",
        "change_material",
        False,
        "Change the material, texture or surface pattern of one named object.",
    ),
    _op(
        "move_object",
        "Move object",
        "object",
        "move_object",
        False,
        "Move one named object to another clearly described place in the scene.",
    ),
    _op(
        "resize_object",
        "Resize object",
        "object",
        "resize_object",
        False,
        "Make one named object clearly bigger or smaller.",
    ),
    _op(
        "reshape",
        "Reshape",
        "object",
        "reshape",
        False,
        "Change the shape or proportions of one named object (rounder, taller, flatter...).",
    ),
    _op(
        "change_text",
        "Change text",
        "object",
        "change_text",
        False,
        "Change a short visible text element (a sign, a label) to another short text.",
    ),
    _op(
        "change_background",
        "Change background",
        "scene",
        "change_background",
        True,
        "Replace the background or setting while keeping the foreground subjects.",
    ),
    _op(
        "remove_background",
        "Remove background",
        "scene",
        "add_background",
        True,
        "Replace the background by a plain, uniform backdrop.",
    ),
    _op(
        "add_background",
        "Add background",
        "scene",
        "remove_background",
        True,
        "Put a described setting behind subjects that stand on a plain backdrop.",
    ),
    _op(
        "time_of_day",
        "Change time of day",
        "scene",
        "time_of_day",
        True,
        "Change the time of day (morning, noon, sunset, night) of the scene.",
    ),
    _op(
        "change_season",
        "Change season",
        "scene",
        "change_season",
        True,
        "Change the season (spring, summer, autumn, winter) of the scene.",
    ),
    _op(
        "change_weather",
        "Change weather",
        "scene",
        "change_weather",
        True,
        "Change the weather (clear, rain, snow, fog, storm) of the scene.",
    ),
    _op(
        "change_lighting",
        "Change lighting",
        "scene",
        "change_lighting",
        True,
        "Change the lighting (warm lamp light, hard sun, neon, candle light) of the scene.",
    ),
    _op(
        "style_transfer",
        "Change style",
        "style",
        "style_transfer",
        True,
        "Render the whole image in another visual style (watercolour, pencil sketch, pop-art...).",
    ),
    _op(
        "restore",
        "Restore",
        "photo",
        "degrade",
        True,
        "Restore a damaged, noisy, blurry or faded image to a clean one.",
    ),
    _op(
        "degrade",
        "Degrade",
        "photo",
        "restore",
        True,
        "Make the image look old, scratched, faded, noisy or blurry.",
    ),
    _op(
        "color_correction",
        "Colour correction",
        "photo",
        "color_correction",
        True,
        "Adjust the overall colour balance, saturation or contrast of the image.",
    ),
    _op(
        "zoom",
        "Change framing",
        "photo",
        "zoom",
        True,
        "Change the framing: zoom in on a subject or zoom out to show more of the scene.",
    ),
    _op(
        "change_haircut",
        "Change haircut",
        "person",
        "change_haircut",
        False,
        "Change the hairstyle or hair colour of one person.",
    ),
    _op(
        "change_beard",
        "Change beard",
        "person",
        "change_beard",
        False,
        "Add, remove or restyle the beard of one person.",
    ),
    _op(
        "change_emotion",
        "Change emotion",
        "person",
        "change_emotion",
        False,
        "Change the facial expression of one person (smiling, surprised, sad...).",
    ),
    _op(
        "change_clothes",
        "Change clothes",
        "person",
        "change_clothes",
        False,
        "Change one garment of one person (colour, type or pattern).",
    ),
    _op(
        "change_accessories",
        "Change accessories",
        "person",
        "change_accessories",
        False,
        "Add, remove or change one accessory of one person (hat, glasses, scarf, bag...).",
    ),
    _op(
        "change_age",
        "Change age",
        "person",
        "change_age",
        False,
        "Make one person look clearly older or younger.",
    ),
    _op(
        "change_physique",
        "Change physique",
        "person",
        "change_physique",
        False,
        "Change the build of one person (more muscular, slimmer...).",
    ),
    _op(
        "change_pose",
        "Change pose",
        "person",
        "change_pose",
        False,
        "Change the pose or gesture of one person or animal.",
    ),
)

OPERATIONS: dict[str, Operation] = {op.key: op for op in _OPERATIONS}


def get(key: str) -> Operation:
    try:
        return OPERATIONS[key]
    except KeyError:
        known = ", ".join(sorted(OPERATIONS))
        raise KeyError(f"unknown operation {key!r}; known operations: {known}") from None


def inverse_of(key: str) -> str:
    return get(key).inverse


def composite_label(first: str, second: str) -> str:
    """Category of a composite triplet made of two edits, e.g. "Remove object & Change colour"."""
    return f"{get(first).label} & {get(second).label}"
