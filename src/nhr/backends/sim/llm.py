"""The simulated text LLM: design batches and inverse instructions, written from the grammar.

It answers the two prompt templates the pipeline sends (design.txt and invert.txt), reading
only what a real model would read from them: the operation, the batch size, topic and styles;
or the original description and the forward instruction. Answers are deterministic in the
request text and seed, and carry a real LLM's quirks (code fences, prose around the JSON,
sometimes a poor inverse) at configured rates.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace

from nhr.backends.sim.config import SimBackendConfig
from nhr.backends.sim.grammar import (
    ATTR_OPERATION,
    Clause,
    PromptSpec,
    Ref,
    article,
    definite_np,
    join_list,
    material_adj,
    object_np,
    parse_instruction,
    parse_prompt,
    resolve,
    scene_words,
    slot_at,
    slot_to,
)
from nhr.backends.sim.tasks import text_task
from nhr.backends.sim.world import (
    ATTR_VALUES,
    BACKGROUNDS,
    COLORS,
    DEFAULT_BACKGROUND,
    DEFAULT_SEASON,
    DEFAULT_STYLE,
    DEFAULT_TIME,
    DEFAULT_WEATHER,
    MATERIALS,
    OBJECT_NAMES,
    SEASONS,
    SIZES,
    SLOTS,
    STYLES,
    TIMES,
    WEATHERS,
    rng,
)

SUPPORTED_OPERATIONS: tuple[str, ...] = (
    "remove_object",
    "add_object",
    "replace_object",
    "change_color",
    "change_material",
    "move_object",
    "resize_object",
    "change_background",
    "time_of_day",
    "change_season",
    "change_weather",
    "style_transfer",
)
MAX_BATCH = 500  # a design request asking for more gets this many items
# The answer to a request that is neither template (see tasks.py).
UNKNOWN_TASK_ANSWER = (
    "I design image-editing data. Send a design brief or an instruction to invert."
)

# --- phrase tables -----------------------------------------------------------------------

_STYLE_INTRO: dict[str, tuple[str, ...]] = {
    "photo": ("A photo of", "A photograph of", "A realistic photo of"),
    "flat": ("A flat illustration of", "A flat vector illustration of"),
    "outline": ("An outline drawing of", "A clean line drawing of"),
    "pastel": ("A pastel illustration of", "A soft pastel drawing of"),
    "noir": ("A noir-style picture of", "A moody noir illustration of"),
    "watercolor": ("A watercolour painting of", "A loose watercolor of"),
    "pop-art": ("A pop-art poster of", "A bold pop art print of"),
    "pixel-art": ("A pixel-art image of", "A retro pixel art scene of"),
    "sketch": ("A pencil sketch of", "A quick sketch of"),
    "oil": ("An oil painting of", "A textured oil painting of"),
    "anime": ("An anime illustration of", "An anime-style frame of"),
}
_STYLE_NP: dict[str, tuple[str, ...]] = {
    "photo": ("a realistic photo",),
    "flat": ("a flat illustration", "flat vector art"),
    "outline": ("an outline drawing", "a line drawing"),
    "pastel": ("a pastel illustration",),
    "noir": ("a noir film still",),
    "watercolor": ("a watercolour painting", "a watercolor"),
    "pop-art": ("a pop-art poster", "pop art"),
    "pixel-art": ("pixel art", "a pixel-art image"),
    "sketch": ("a pencil sketch",),
    "oil": ("an oil painting",),
    "anime": ("an anime frame",),
}
_TIME_AT: dict[str, tuple[str, ...]] = {
    "morning": ("in the early morning", "at dawn"),
    "day": ("at midday", "during the day", "in broad daylight"),
    "sunset": ("at sunset", "at dusk"),
    "night": ("at night", "late at night"),
}
_SEASON_AT: dict[str, tuple[str, ...]] = {
    "spring": ("in spring", "in springtime"),
    "summer": ("in summer", "on a summer afternoon"),
    "autumn": ("in autumn", "in the fall"),
    "winter": ("in winter", "on a winter afternoon"),
}
_WEATHER_AT: dict[str, tuple[str, ...]] = {
    "clear": ("under a clear sky", "in sunny weather"),
    "rain": ("in the rain", "during a light rain"),
    "snow": ("in falling snow", "while it is snowing"),
    "fog": ("in thick fog", "on a misty afternoon"),
    "storm": ("during a storm", "in a thunderstorm"),
}
_TIME_EDIT: dict[str, tuple[str, ...]] = {
    "morning": (
        "Make it early morning",
        "Change the time of day to morning",
        "Show the scene at dawn",
    ),
    "day": (
        "Make it daytime",
        "Change the time of day to midday",
        "Show the scene in broad daylight",
    ),
    "sunset": ("Make it sunset", "Change the time of day to sunset", "Show the scene at dusk"),
    "night": ("Make it night", "Turn it into a night scene", "Change the time of day to night"),
}
_SEASON_EDIT: tuple[str, ...] = (
    "Make it {}",
    "Turn it into a {} scene",
    "Change the season to {}",
    "Show the scene in {}",
)
_WEATHER_EDIT: dict[str, tuple[str, ...]] = {
    "clear": ("Make the weather clear and sunny", "Make it sunny"),
    "rain": ("Make it rain", "Make it rainy", "Add rain"),
    "snow": ("Make it snow", "Add falling snow", "Make it snowy"),
    "fog": ("Add thick fog", "Make it foggy"),
    "storm": ("Make it stormy", "Add a thunderstorm"),
}
_BACKGROUND_EDIT: tuple[str, ...] = (
    "Change the background to {}",
    "Replace the background with {}",
    "Set the scene in {}",
    "Move everything to {}",
)
_BACKGROUND_INVERSE: tuple[str, ...] = ("Set the scene in {}", "Change the setting to {}")
_STYLE_EDIT: tuple[str, ...] = (
    "Make it look like {}",
    "Render it as {}",
    "Change the style to {}",
    "Turn it into {}",
)
_REMOVE: tuple[str, ...] = (
    "Remove {}",
    "Get rid of {}",
    "Take out {}",
    "Erase {}",
    "Delete {} from the picture",
    "Please remove {}",
    "Can you get rid of {}?",
    "Lose {}",
)
_REMOVE_ALL: tuple[str, ...] = (
    "Remove {}",
    "Get rid of {}",
    "Take out {}",
    "Remove all of them: {}",
)
_ADD: tuple[str, ...] = ("Add {}", "Put {}", "Place {}", "Insert {}")
_REPLACE: tuple[str, ...] = (
    "Replace {} with {}",
    "Swap {} for {}",
    "Turn {} into {}",
    "Change {} into {}",
)
_COLOR: tuple[str, ...] = (
    "Make {} {}",
    "Change the colour of {} to {}",
    "Paint {} {}",
    "Recolour {} {}",
    "Turn {} {}",
)
_MOVE: tuple[str, ...] = ("Move {} {}", "Shift {} {}", "Slide {} {}", "Relocate {} {}")
_FILLERS: tuple[str, ...] = (
    "Eye-level view, balanced composition.",
    "Soft, even lighting and a calm mood.",
    "Wide shot with gentle depth of field.",
    "Shot on a 35mm lens.",
    "Vivid colours and crisp shapes.",
    "Warm, inviting atmosphere.",
    "Quiet, peaceful mood.",
    "Detailed textures, high quality.",
    "Seen from slightly above.",
)
_VAGUE: tuple[str, ...] = (
    "Change it",
    "Make it like it was",
    "Fix the picture",
    "Make it look right",
    "Change the image to the way it looked",
    "Make it match the description",
)
_BANNED_WRAP: tuple[str, ...] = (
    "{text}, putting it back as it was",
    "Undo the edit: {lower}",
    "Revert the change: {lower}",
    "Restore the original: {lower}",
    "Bring back the original look: {lower}",
)
_STYLE_ALIASES: dict[str, str] = {
    "illustration": "flat",
    "vector": "flat",
    "cartoon": "flat",
    "ukiyo-e": "outline",
    "comic": "pop-art",
    "painting": "oil",
    "drawing": "sketch",
    "realistic": "photo",
    "8-bit": "pixel-art",
    "retro game": "pixel-art",
    "film noir": "noir",
}
_TOPIC_KINDS: dict[str, tuple[str, ...]] = {
    "home": ("kitchen", "bedroom", "office", "library"),
    "indoor": ("kitchen", "bedroom", "office", "library"),
    "interior": ("kitchen", "bedroom", "office", "library"),
    "outdoor": ("street", "beach", "forest", "park", "garden", "meadow", "harbor", "desert"),
    "nature": ("forest", "meadow", "beach", "desert", "garden"),
    "city": ("street", "harbor", "park"),
    "urban": ("street", "harbor"),
}


# --- requests ----------------------------------------------------------------------------------


def answer(text: str, seed: int | None, config: SimBackendConfig) -> str:
    """The LLM's answer to one chat request (all messages joined)."""
    task = text_task(text)
    if task == "invert":
        return invert(text, seed, config)
    if task == "design":
        return design(text, seed, config)
    if task == "design_image":
        from nhr.backends.sim.photos import design_edits  # photos imports this module

        return design_edits(text, seed, config)
    return UNKNOWN_TASK_ANSWER


def design(text: str, seed: int | None, config: SimBackendConfig) -> str:
    """A JSON array of {prompt, style, edits} items for the requested operation and batch size.

    The answer depends only on what is read from the request (and the seed), not on the rest
    of its wording, so rewording design.txt does not change the simulated world."""
    op_match = re.search(r"Operation:\s*([A-Za-z_]+)", text)
    operation = op_match.group(1).lower() if op_match else ""
    count_match = re.search(r"exactly\s+(\d+)\s+items", text)
    count = min(MAX_BATCH, int(count_match.group(1))) if count_match else 1
    topic, styles_line = _line(text, "Topic"), _line(text, "Styles to vary over")
    rnd = rng("design", config.model, seed, operation, count, topic, styles_line)
    if operation not in SUPPORTED_OPERATIONS:
        body = "[]"
    else:
        kinds = _topic_kinds(topic)
        styles = _style_pool(styles_line)
        offset = rnd.randrange(5)
        items = [
            _design_item(operation, index, offset, kinds, styles, rnd) for index in range(count)
        ]
        body = json.dumps(items, ensure_ascii=False, indent=2 if rnd.random() < 0.5 else None)
    if rnd.random() < config.wrap_json:
        template = rnd.choice(
            (
                "```json\n{}\n```",
                "Here are the {n} items you asked for:\n\n{}",
                "{}\n\nEach prompt comes with edits that fit it.",
                "Sure! Below is the JSON array.\n```json\n{}\n```\nLet me know if you need more.",
            )
        )
        body = template.replace("{n}", str(count)).replace("{}", body)
    return body


def _line(text: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}:\s*(.*)$", text, re.MULTILINE)
    return match.group(1) if match else ""


def _topic_kinds(topic: str) -> list[str]:
    lowered = topic.lower()
    kinds = [k for k in BACKGROUNDS if re.search(rf"\b{k}s?\b", lowered)]
    for word, extra in _TOPIC_KINDS.items():
        if word in lowered:
            kinds += [k for k in extra if k not in kinds]
    return kinds or list(BACKGROUNDS)


def _style_pool(styles: str) -> dict[str, str]:
    """The simulator's styles the brief asks for, each with the brief's name for it (the first
    brief style that maps to it), which a design item reports as its style. A brief naming no
    style the simulator can draw gets all of them, reported under their own names."""
    pool: dict[str, str] = {}
    for label in styles.split(","):
        label = label.strip()
        item = label.lower()
        style = scene_words(item).get("style")
        if style is None:
            style = next((v for k, v in _STYLE_ALIASES.items() if k in item), None)
        if style and style not in pool:
            pool[style] = label
    return pool or {style: style for style in STYLES}


# --- designing one item ------------------------------------------------------------------------


def _sample_spec(
    rnd: random.Random, n_objects: int, kinds: list[str], styles: list[str]
) -> PromptSpec:
    names = rnd.sample(OBJECT_NAMES, n_objects)
    slots = rnd.sample(list(SLOTS), n_objects)
    colors = rnd.sample(list(COLORS), n_objects)
    objects = tuple(
        Ref(
            name=name,
            color=color,
            material="plain" if rnd.random() < 0.6 else rnd.choice(MATERIALS[1:]),
            size=rnd.choices(SIZES, weights=(1, 2, 1))[0],
            slot=slot,
        )
        for name, slot, color in zip(names, slots, colors)
    )
    return PromptSpec(
        background=rnd.choice(kinds),
        time=rnd.choices(TIMES, weights=(2, 4, 2, 2))[0],
        season=rnd.choice(SEASONS),
        weather=rnd.choices(WEATHERS, weights=(6, 1, 1, 1, 1))[0],
        style=rnd.choice(styles),
        objects=objects,
    )


def write_prompt(spec: PromptSpec, rnd: random.Random) -> str:
    """A natural-language prompt that `parse_prompt` reads back as `spec`."""
    style = spec.style or DEFAULT_STYLE
    background = spec.background or DEFAULT_BACKGROUND
    where = f"{article(background)} {background}"
    context = []
    if spec.time and (spec.time != DEFAULT_TIME or rnd.random() < 0.5):
        context.append(rnd.choice(_TIME_AT[spec.time]))
    if spec.season and (spec.season != DEFAULT_SEASON or rnd.random() < 0.5):
        context.append(rnd.choice(_SEASON_AT[spec.season]))
    if spec.weather and (spec.weather != DEFAULT_WEATHER or rnd.random() < 0.3):
        context.append(rnd.choice(_WEATHER_AT[spec.weather]))
    setting = " ".join([where] + context)
    nps = [object_np(o, rnd) for o in spec.objects]
    intro = rnd.choice(_STYLE_INTRO[style])
    filler = " ".join(rnd.sample(_FILLERS, rnd.randint(1, 2)))
    form = rnd.randrange(3) if len(nps) >= 2 else rnd.choice((0, 2))
    if form == 0:
        text = f"{intro} {setting}: {join_list(nps)}."
    elif form == 1:
        text = (
            f"{intro} {setting}. In the foreground, {nps[0]}; further away, {join_list(nps[1:])}."
        )
    else:
        lead = join_list(nps)
        text = f"{lead[0].upper()}{lead[1:]} in {setting}, {intro[0].lower()}{intro[1:-3]}."
    return f"{text} {filler}"


def _the(obj: Ref, rnd: random.Random, size: bool = False) -> str:
    """A definite reference with a spatial cue, sometimes with the colour (or size)."""
    words = ["the"]
    if size and obj.size and obj.size != "medium" and rnd.random() < 0.5:
        words.append(obj.size)
    if obj.color and rnd.random() < 0.5:
        words.append(obj.color)
    words.append(obj.name)
    return f"{' '.join(words)} {slot_at(obj.slot, rnd)}" if obj.slot else " ".join(words)


def _design_item(
    operation: str,
    index: int,
    offset: int,
    kinds: list[str],
    styles: dict[str, str],
    rnd: random.Random,
) -> dict[str, object]:
    if operation == "remove_object":
        n_objects = 1 + (index + offset) % 5
    elif operation in ("add_object", "move_object"):
        n_objects = rnd.randint(1, 4)
    else:
        n_objects = rnd.randint(1, 5)
    spec = _sample_spec(rnd, n_objects, kinds, list(styles))
    edits = _design_edits(operation, spec, rnd)
    return {
        "prompt": write_prompt(spec, rnd),
        "style": styles[spec.style or DEFAULT_STYLE],
        "edits": [{"instruction": text, "composite": composite} for text, composite in edits],
    }


def _design_edits(operation: str, spec: PromptSpec, rnd: random.Random) -> list[tuple[str, bool]]:
    objects = list(spec.objects)
    k = rnd.randint(2, 4)  # several edits per prompt, as a real designer writes
    if operation == "remove_object":
        edits = [(rnd.choice(_REMOVE).format(_the(o, rnd)), False) for o in objects]
        if len(objects) >= 2:
            refs = join_list([_the(o, rnd) for o in objects])
            edits.append((rnd.choice(_REMOVE_ALL).format(refs), True))
        return edits
    if operation == "add_object":
        names = rnd.sample([n for n in OBJECT_NAMES if n not in {o.name for o in objects}], k)
        free = [s for s in SLOTS if s not in {o.slot for o in objects}]
        slots = rnd.sample(free, min(k, len(free)))
        return [
            (
                rnd.choice(_ADD).format(
                    object_np(
                        Ref(
                            name=name,
                            color=rnd.choice(list(COLORS)),
                            material="plain" if rnd.random() < 0.7 else rnd.choice(MATERIALS[1:]),
                            size=rnd.choices(SIZES, weights=(1, 2, 1))[0],
                            slot=slot,
                        ),
                        rnd,
                    )
                ),
                False,
            )
            for name, slot in zip(names, slots)
        ]
    if operation in (
        "time_of_day",
        "change_season",
        "change_weather",
        "style_transfer",
        "change_background",
    ):
        return [
            (_global_edit(operation, value, rnd), False)
            for value in _new_values(operation, spec, k, rnd)
        ]
    targets = rnd.sample(objects, min(k, len(objects)))
    edits = []
    for obj in targets:
        text = _object_edit(operation, obj, spec, rnd)
        if text:
            edits.append((text, False))
    return edits


def _new_values(operation: str, spec: PromptSpec, k: int, rnd: random.Random) -> list[str]:
    attr = next(a for a, op in ATTR_OPERATION.items() if op == operation)
    current = _attr(spec, attr)
    options = [v for v in ATTR_VALUES[attr] if v != current]
    return rnd.sample(options, min(k, len(options)))


def _attr(spec: PromptSpec, attr: str) -> str:
    defaults = {
        "background": DEFAULT_BACKGROUND,
        "time": DEFAULT_TIME,
        "season": DEFAULT_SEASON,
        "weather": DEFAULT_WEATHER,
        "style": DEFAULT_STYLE,
    }
    return getattr(spec, attr) or defaults[attr]


def _global_edit(operation: str, value: str, rnd: random.Random, inverse: bool = False) -> str:
    if operation == "time_of_day":
        return rnd.choice(_TIME_EDIT[value])
    if operation == "change_season":
        return rnd.choice(_SEASON_EDIT).format(value).replace("a autumn", "an autumn")
    if operation == "change_weather":
        return rnd.choice(_WEATHER_EDIT[value])
    if operation == "style_transfer":
        return rnd.choice(_STYLE_EDIT).format(rnd.choice(_STYLE_NP[value]))
    templates = _BACKGROUND_INVERSE if inverse else _BACKGROUND_EDIT
    return rnd.choice(templates).format(f"{article(value)} {value}")


def _object_edit(operation: str, obj: Ref, spec: PromptSpec, rnd: random.Random) -> str | None:
    if operation == "replace_object":
        new_name = rnd.choice([n for n in OBJECT_NAMES if n not in {o.name for o in spec.objects}])
        new_color = rnd.choice(list(COLORS)) if rnd.random() < 0.5 else None
        new = object_np(Ref(name=new_name, color=new_color), rnd, with_slot=False)
        return rnd.choice(_REPLACE).format(_the(obj, rnd), new)
    if operation == "change_color":
        color = rnd.choice([c for c in COLORS if c != obj.color])
        return rnd.choice(_COLOR).format(_the(obj, rnd), color)
    if operation == "change_material":
        material = rnd.choice([m for m in MATERIALS if m != (obj.material or "plain")])
        return _material_edit(_the(obj, rnd), material, rnd)
    if operation == "move_object":
        free = [s for s in SLOTS if s not in {o.slot for o in spec.objects}]
        return rnd.choice(_MOVE).format(_the(obj, rnd), slot_to(rnd.choice(free), rnd))
    if operation == "resize_object":
        size = obj.size or "medium"
        options = {
            "small": ("bigger", "large", "up"),
            "medium": ("bigger", "smaller", "large", "small"),
            "large": ("smaller", "small", "down"),
        }[size]
        choice = rnd.choice(options)
        ref = _the(obj, rnd, size=True)
        if choice in ("up", "down"):
            return f"Scale {ref} {choice}"
        if choice == "bigger":
            return rnd.choice((f"Make {ref} bigger", f"Enlarge {ref}", f"Make {ref} much larger"))
        if choice == "smaller":
            return rnd.choice((f"Make {ref} smaller", f"Shrink {ref}", f"Make {ref} a lot smaller"))
        return f"Make {ref} {choice}"
    return None


def _material_edit(ref: str, material: str, rnd: random.Random) -> str:
    if material in ("striped", "dotted", "checkered"):
        return rnd.choice(
            (
                f"Make {ref} {material_adj(material, rnd)}",
                f"Give {ref} a {material_adj(material, rnd)} pattern",
            )
        )
    if material in ("wooden", "metal", "glass"):
        noun = {"wooden": "wood", "metal": "metal", "glass": "glass"}[material]
        return rnd.choice(
            (
                f"Make {ref} out of {noun}",
                f"Make {ref} {material_adj(material, rnd)}",
                f"Change the material of {ref} to {noun}",
            )
        )
    return rnd.choice((f"Make {ref} plain", f"Give {ref} a plain finish"))


# --- inversion ---------------------------------------------------------------------------------


def invert(text: str, seed: int | None, config: SimBackendConfig) -> str:
    """One inverse instruction, from the original description and the forward instruction."""
    rnd = rng("invert", config.model, seed, text)
    prompt = _field(text, "Original description")
    forward = _field(text, "Forward instruction")
    errors = config.inversion_errors
    u = rnd.random()
    kind = (
        "vague"
        if u < errors.vague
        else "wrong"
        if u < errors.vague + errors.wrong
        else "banned"
        if u < errors.vague + errors.wrong + errors.banned_word
        else "correct"
    )
    clauses = parse_instruction(forward)
    if kind == "vague" or not clauses:
        return rnd.choice(_VAGUE)
    spec = parse_prompt(prompt)
    pieces = [
        _inverse(c, spec, rnd, wrong=(kind == "wrong" and i == 0)) for i, c in enumerate(clauses)
    ]
    if all(p[0] == "add" for p in pieces):
        answer = rnd.choice(_ADD).format(join_list([p[1] for p in pieces]))
    else:
        sentences = [p[1] if p[0] == "text" else f"Add {p[1]}" for p in pieces]
        answer = " and ".join([sentences[0]] + [s[0].lower() + s[1:] for s in sentences[1:]])
    if kind == "banned":
        template = rnd.choice(_BANNED_WRAP)
        answer = template.format(text=answer, lower=answer[0].lower() + answer[1:])
    return answer


def _field(text: str, label: str) -> str:
    match = re.search(rf"{re.escape(label)}[^:\n]*:\s*(.*)", text)
    return match.group(1).strip() if match else ""


def _other(pool: list[str] | tuple[str, ...], *avoid: str | None, rnd: random.Random) -> str:
    options = [v for v in pool if v not in avoid]
    return rnd.choice(options or list(pool))


def _inverse(clause: Clause, spec: PromptSpec, rnd: random.Random, wrong: bool) -> tuple[str, str]:
    """("add", noun phrase) for re-additions, which combine into one list; else ("text", ...)."""
    objects = list(spec.objects)
    ref = clause.ref
    if clause.changes:
        parts = []
        for attr, value in clause.changes:
            original = _attr(spec, attr)
            if wrong:
                original = _other(ATTR_VALUES[attr], original, value, rnd=rnd)
            parts.append(_global_edit(ATTR_OPERATION[attr], original, rnd, inverse=True))
        return "text", " and ".join([parts[0]] + [p[0].lower() + p[1:] for p in parts[1:]])
    assert ref is not None
    orig = resolve(ref, objects) or ref
    if orig.slot is None and ref.slot is not None:
        orig = replace(orig, slot=ref.slot)
    if clause.op == "remove_object":
        if wrong:
            if rnd.random() < 0.5 or orig.slot is None:
                orig = replace(orig, color=_other(list(COLORS), orig.color, rnd=rnd))
            else:
                orig = replace(orig, slot=_other(list(SLOTS), orig.slot, rnd=rnd))
        return "add", object_np(orig, rnd)
    if clause.op == "add_object":
        target = ref
        if wrong:
            others = [o for o in objects if o.name != ref.name]
            target = (
                rnd.choice(others)
                if others
                else replace(ref, slot=_other(list(SLOTS), ref.slot, rnd=rnd))
            )
        return "text", rnd.choice(_REMOVE).format(definite_np(target, rnd))
    current = (
        replace(orig, color=clause.new_color or orig.color)
        if clause.op == "replace_object"
        else orig
    )
    here = _current_ref(clause, orig)
    if clause.op == "replace_object":
        name = _other(OBJECT_NAMES, orig.name, clause.value, rnd=rnd) if wrong else orig.name
        back_np = object_np(Ref(name=name, color=orig.color), rnd, with_slot=False)
        new_ref = Ref(name=clause.value or "", color=current.color, slot=orig.slot)
        return "text", f"Replace {definite_np(new_ref, rnd)} with {back_np}"
    if clause.op == "change_color":
        color = orig.color if not wrong else _other(list(COLORS), orig.color, clause.value, rnd=rnd)
        if color is None:
            return "text", f"Change the colour of {definite_np(here, rnd)} to its original colour"
        return "text", rnd.choice(_COLOR).format(definite_np(here, rnd), color)
    if clause.op == "change_material":
        material = orig.material or "plain"
        if wrong:
            material = _other(MATERIALS, material, clause.value, rnd=rnd)
        return "text", _material_edit(definite_np(here, rnd), material, rnd)
    if clause.op == "resize_object":
        size = orig.size or "medium"
        if wrong:
            size = _other(SIZES, size, rnd=rnd)
        word = "medium-sized" if size == "medium" else size
        return "text", f"Make {definite_np(here, rnd)} {word}"
    if clause.op == "move_object":
        slot = orig.slot or "center"
        if wrong:
            slot = _other(list(SLOTS), slot, clause.value, rnd=rnd)
        return "text", rnd.choice(_MOVE).format(definite_np(here, rnd), slot_to(slot, rnd))
    return "text", rnd.choice(_VAGUE)


def _current_ref(clause: Clause, orig: Ref) -> Ref:
    """How the edited object is referred to in the EDITED image (its new colour, place...)."""
    color = orig.color
    slot = orig.slot
    if clause.op == "change_color":
        color = clause.value
    if clause.op == "move_object":
        slot = clause.value
    return Ref(name=orig.name, color=color, slot=slot)
