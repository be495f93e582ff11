"""The simulator's language: how scenes and edits are written, and how text is read back.

The design and inversion LLM write with the phrase helpers here; the generator, the editor
and the judge read with the parsers. Parsing is keyed on the closed vocabularies of
`world`, so unknown words are ignored and a real LLM's text in the same spirit parses too.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from nhr.backends.sim.world import BACKGROUNDS, COLORS, MATERIALS, MAX_OBJECTS, OBJECT_NAMES

# --- word tables ----------------------------------------------------------------------------

_OBJECT_WORDS: dict[str, str] = {name: name for name in OBJECT_NAMES}
_OBJECT_WORDS.update({f"{name}s": name for name in OBJECT_NAMES})
_OBJECT_WORDS.update(
    {
        "mailboxes": "mailbox",
        "postbox": "mailbox",
        "letterbox": "mailbox",
        "bike": "bicycle",
        "bikes": "bicycle",
        "kitten": "cat",
        "kitty": "cat",
        "puppy": "dog",
        "puppies": "dog",
        "armchair": "chair",
        "parasol": "umbrella",
        "houseplant": "plant",
        "kettle": "teapot",
    }
)
_COLOR_WORDS: dict[str, str] = {c: c for c in COLORS} | {"grey": "gray"}
_MATERIAL_WORDS: dict[str, str] = {m: m for m in MATERIALS} | {
    "stripes": "striped",
    "stripy": "striped",
    "stripe": "striped",
    "dots": "dotted",
    "polka-dot": "dotted",
    "polka-dots": "dotted",
    "spotted": "dotted",
    "chequered": "checkered",
    "checked": "checkered",
    "checks": "checkered",
    "checkerboard": "checkered",
    "wood": "wooden",
    "metallic": "metal",
    "steel": "metal",
}
_SIZE_WORDS: dict[str, str] = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "medium": "medium",
    "medium-sized": "medium",
    "large": "large",
    "big": "large",
    "huge": "large",
}
_RELATIVE_SIZE: dict[str, str] = {
    "bigger": "+1",
    "larger": "+1",
    "up": "+1",
    "smaller": "-1",
    "down": "-1",
}

_SCENE_PATTERNS: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    "style": [
        ("photo", re.compile(r"\bphoto(?:graph|realistic)?s?\b")),
        ("flat", re.compile(r"\bflat\b")),
        ("outline", re.compile(r"\boutline\b|\bline[- ](?:drawing|art)\b")),
        ("pastel", re.compile(r"\bpastels?\b")),
        ("noir", re.compile(r"\bnoir\b")),
        ("watercolor", re.compile(r"\bwatercolou?rs?\b")),
        ("pop-art", re.compile(r"\bpop[- ]?art\b")),
        ("pixel-art", re.compile(r"\bpixel[- ]?art\b|\bpixelated\b")),
        ("sketch", re.compile(r"\bsketch\b|\bpencil drawing\b")),
        ("oil", re.compile(r"\boil(?: painting)?\b")),
        ("anime", re.compile(r"\banime\b|\bmanga\b")),
    ],
    "background": [
        (kind, re.compile(rf"\b{kind.replace('harbor', 'harbou?r')}s?\b")) for kind in BACKGROUNDS
    ],
    "time": [
        ("morning", re.compile(r"\b(?:morning|dawn|sunrise)\b")),
        ("day", re.compile(r"\b(?:daytime|midday|noon|daylight|during the day)\b")),
        ("sunset", re.compile(r"\b(?:sunset|dusk|evening)\b")),
        ("night", re.compile(r"\b(?:night|nighttime|night-time|midnight)\b")),
    ],
    "season": [
        ("spring", re.compile(r"\bspring(?:time)?\b")),
        ("summer", re.compile(r"\bsummer(?:time)?\b")),
        ("autumn", re.compile(r"\b(?:autumn|autumnal|fall)\b")),
        ("winter", re.compile(r"\b(?:winter|wintry|wintertime)\b")),
    ],
    "weather": [
        ("rain", re.compile(r"\b(?:rain|rainy|raining|drizzle|rainfall)\b")),
        ("snow", re.compile(r"\b(?:snow|snowy|snowing|snowfall|snowflakes)\b")),
        ("fog", re.compile(r"\b(?:fog|foggy|mist|misty|haze|hazy)\b")),
        ("storm", re.compile(r"\b(?:storm|stormy|thunderstorm)\b")),
        ("clear", re.compile(r"\b(?:clear|sunny|cloudless)\b")),
    ],
}

# Which taxonomy operation changes each global attribute.
ATTR_OPERATION: dict[str, str] = {
    "background": "change_background",
    "time": "time_of_day",
    "season": "change_season",
    "weather": "change_weather",
    "style": "style_transfer",
}

T = TypeVar("T")

_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*")


@dataclass(frozen=True)
class Ref:
    """An object as text describes it: the name and whatever attributes the text gives."""

    name: str
    color: str | None = None
    material: str | None = None
    size: str | None = None
    slot: str | None = None


@dataclass(frozen=True)
class Clause:
    """One atomic edit read from an instruction.

    `op` is a taxonomy key. Object operations carry `ref` (the object acted on; for
    add_object the object to add) and `value` (new colour, material, size or "+1"/"-1", slot,
    or object name for replace_object, with `new_color` if the text gives one). Global
    operations carry `changes`: ((attribute, value), ...).
    """

    op: str
    ref: Ref | None = None
    value: str | None = None
    new_color: str | None = None
    changes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PromptSpec:
    """What a text-to-image prompt asks for; None where the prompt does not say."""

    background: str | None
    time: str | None
    season: str | None
    weather: str | None
    style: str | None
    objects: tuple[Ref, ...]

    @property
    def empty(self) -> bool:
        return not self.objects and self.background is None


# --- low-level readers -----------------------------------------------------------------------


def _tokens(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text.lower())]


def _last(words: list[str], table: dict[str, str]) -> str | None:
    found = [table[w] for w in words if w in table]
    return found[-1] if found else None


def slot_from_words(words: list[str]) -> str | None:
    """The spatial slot a phrase names ("in the top left corner" -> "top left")."""
    ws = set(words)
    vertical = "top" if ws & {"top", "upper"} else "bottom" if ws & {"bottom", "lower"} else None
    horizontal = "left" if "left" in ws else "right" if "right" in ws else None
    if vertical and horizontal:
        return f"{vertical} {horizontal}"
    if vertical or horizontal:
        return vertical or horizontal
    if ws & {"middle", "center", "centre", "central", "centered", "centred"}:
        return "center"
    return None


def scene_words(text: str) -> dict[str, str]:
    """Global attributes named in `text`, the earliest mention of each kind winning."""
    lowered = text.lower()
    found: dict[str, str] = {}
    for attr, patterns in _SCENE_PATTERNS.items():
        best: tuple[int, str] | None = None
        for value, pattern in patterns:
            match = pattern.search(lowered)
            if match and (best is None or match.start() < best[0]):
                best = (match.start(), value)
        if best is not None:
            found[attr] = best[1]
    return found


def _mentions(words: list[str]) -> list[int]:
    return [i for i, w in enumerate(words) if w in _OBJECT_WORDS]


# --- prompts ---------------------------------------------------------------------------------

_PROMPT_SEGMENT = re.compile(r"[,;:.!?()]|\band\b|\bwith\b|\bwhile\b|\bplus\b")


def parse_prompt(text: str) -> PromptSpec:
    """Read a text-to-image prompt: scene attributes and up to MAX_OBJECTS distinct objects."""
    found = scene_words(text)
    objects: list[Ref] = []
    seen: set[str] = set()
    for segment in _PROMPT_SEGMENT.split(text.lower()):
        words = [w for w, _, _ in _tokens(segment)]
        marks = _mentions(words)
        for k, i in enumerate(marks):
            start = marks[k - 1] + 1 if k else 0
            end = marks[k + 1] if k + 1 < len(marks) else len(words)
            name = _OBJECT_WORDS[words[i]]
            if name in seen or len(objects) >= MAX_OBJECTS:
                continue
            seen.add(name)
            pre = words[start:i]
            objects.append(
                Ref(
                    name=name,
                    color=_last(pre, _COLOR_WORDS),
                    material=_last(pre, _MATERIAL_WORDS),
                    size=_last(pre, _SIZE_WORDS),
                    slot=slot_from_words(words[i + 1 : end]),
                )
            )
    return PromptSpec(
        background=found.get("background"),
        time=found.get("time"),
        season=found.get("season"),
        weather=found.get("weather"),
        style=found.get("style"),
        objects=tuple(objects),
    )


# --- instructions ----------------------------------------------------------------------------

_CLAUSE_SPLIT = re.compile(r"\s*(?:[,;:!?]|\.(?=\s|$)|\band then\b|\bthen\b|\band\b|&)\s*")
_LEAD = re.compile(
    r"^(?:please|kindly|can you|could you|would you|now|also|just|i want you to|let's|lets|"
    r"i'd like you to|go ahead and)\s+"
)
_VERBS: list[tuple[str, re.Pattern[str]]] = [
    (
        "remove",
        re.compile(
            r"^(?:remove|delete|erase|eliminate|get rid of|take out|take away|lose|drop|cut out)\b"
        ),
    ),
    ("add", re.compile(r"^(?:add|put|place|insert|include|draw)\b")),
    ("replace", re.compile(r"^(?:replace|swap|substitute|exchange)\b")),
    ("move", re.compile(r"^(?:move|shift|slide|relocate|drag)\b")),
    ("resize", re.compile(r"^(?:enlarge|shrink|scale|resize|grow)\b")),
    ("color", re.compile(r"^(?:paint|recolou?r|colou?r|tint|dye)\b")),
    (
        "generic",
        re.compile(
            r"^(?:make|turn|change|give|set|switch|render|show|transform|convert|let|have|redo)\b"
        ),
    ),
]
_CONNECTORS = {"into", "with", "for", "by"}
_DESTINATION = {"to", "towards", "toward", "into", "onto"}


def _verb(text: str) -> tuple[str | None, str, str]:
    """(verb family, the verb itself, the rest of the clause)."""
    while True:
        stripped = _LEAD.sub("", text)
        if stripped == text:
            break
        text = stripped
    for family, pattern in _VERBS:
        match = pattern.match(text)
        if match:
            return family, match.group(0), text[match.end() :]
    return None, "", text


def _object_clause(family: str | None, verb: str, words: list[str]) -> Clause | None:
    marks = _mentions(words)
    first = marks[0]
    name = _OBJECT_WORDS[words[first]]
    pre = words[:first]
    end = marks[1] if len(marks) > 1 else len(words)
    post = words[first + 1 : end]
    # Attributes before the name describe the object; words after it give its place and,
    # for most operations, the new value ("the red bicycle on the left" ... "green").
    base = Ref(
        name=name,
        color=_last(pre, _COLOR_WORDS),
        material=_last(pre, _MATERIAL_WORDS),
        size=_last(pre, _SIZE_WORDS),
    )

    def at(place: list[str]) -> Ref:
        return replace(base, slot=slot_from_words(place))

    if family == "remove":
        return Clause("remove_object", at(post))
    if family == "add":
        return Clause("add_object", at(post))

    connector = next((i for i, w in enumerate(post) if w in _CONNECTORS), None)
    if len(marks) > 1 and family in ("replace", "generic", None) and connector is not None:
        new_words = post[connector + 1 :]
        return Clause(
            "replace_object",
            at(post[:connector]),
            value=_OBJECT_WORDS[words[marks[1]]],
            new_color=_last(new_words, _COLOR_WORDS),
        )
    if family == "replace":
        return None

    if family == "move" or (family in ("generic", None) and _destination(post) is not None):
        dest = _destination(post)
        if dest is None:
            return None
        cut = max(i for i, w in enumerate(post) if w in _DESTINATION)
        return Clause("move_object", at(post[:cut]), value=dest)

    ref = at(post)
    color = _last(post, _COLOR_WORDS)
    material = _last(post, _MATERIAL_WORDS)
    size = _last(post, _SIZE_WORDS) or _last(post, _RELATIVE_SIZE)
    if family == "resize" or (family in ("generic", None) and color is None and material is None):
        if size is None and verb in ("enlarge", "grow"):
            size = "+1"
        if size is None and verb == "shrink":
            size = "-1"
        return Clause("resize_object", ref, value=size) if size else None
    if family == "color" or color is not None:
        return Clause("change_color", ref, value=color) if color else None
    if material is not None:
        return Clause("change_material", ref, value=material)
    return None


def _destination(post: list[str]) -> str | None:
    cuts = [i for i, w in enumerate(post) if w in _DESTINATION]
    if not cuts:
        return None
    return slot_from_words(post[max(cuts) + 1 :])


def _global_clause(family: str | None, text: str) -> Clause | None:
    found = scene_words(text)
    if family == "remove" and "weather" in found:
        found = {"weather": "clear"}
    if not found:
        return None
    order = ("style", "background", "time", "season", "weather")
    changes = tuple((attr, found[attr]) for attr in order if attr in found)
    return Clause(ATTR_OPERATION[changes[0][0]], changes=changes)


def parse_instruction(text: str) -> list[Clause]:
    """Read an edit instruction into atomic clauses (empty when nothing can be understood).

    Clauses are split at commas, "and" and "then"; a clause without a verb ("the lamp on
    the right" in "Remove the cat and the lamp on the right") reuses the previous verb.
    """
    clauses: list[Clause] = []
    family: str | None = None
    verb = ""
    for part in _CLAUSE_SPLIT.split(text.lower().strip()):
        part = part.strip(" .'\"")
        if not part:
            continue
        new_family, new_verb, rest = _verb(part)
        if new_family is not None:
            family, verb = new_family, new_verb
        words = [w for w, _, _ in _tokens(rest)]
        if _mentions(words):
            clause = _object_clause(family, verb, words)
        else:
            clause = _global_clause(family, rest)
        if clause is not None and clause not in clauses:
            clauses.append(clause)
    return clauses


# --- writing ---------------------------------------------------------------------------------

_SLOT_AT: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "center": ("in the middle", "in the center", "in the centre"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "top left": ("in the top left corner", "at the top left", "in the upper left corner"),
    "top right": ("in the top right corner", "at the top right", "in the upper right corner"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "in the lower left corner"),
    "bottom right": (
        "in the bottom right corner",
        "at the bottom right",
        "in the lower right corner",
    ),
}
_SLOT_TO: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "over to the left side"),
    "right": ("to the right", "over to the right side"),
    "center": ("to the middle", "into the center"),
    "top": ("to the top", "up to the top"),
    "bottom": ("to the bottom", "down to the bottom"),
    "top left": ("to the top left corner", "to the upper left corner"),
    "top right": ("to the top right corner", "to the upper right corner"),
    "bottom left": ("to the bottom left corner", "to the lower left corner"),
    "bottom right": ("to the bottom right corner", "to the lower right corner"),
}
_MATERIAL_ADJ: dict[str, tuple[str, ...]] = {
    "plain": ("plain",),
    "striped": ("striped",),
    "dotted": ("dotted", "polka-dot"),
    "checkered": ("checkered",),
    "wooden": ("wooden",),
    "metal": ("metal", "metallic"),
    "glass": ("glass",),
}


def slot_at(slot: str, rnd: random.Random) -> str:
    return rnd.choice(_SLOT_AT[slot])


def slot_to(slot: str, rnd: random.Random) -> str:
    return rnd.choice(_SLOT_TO[slot])


def material_adj(material: str, rnd: random.Random) -> str:
    return rnd.choice(_MATERIAL_ADJ[material])


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def object_np(ref: Ref, rnd: random.Random, with_slot: bool = True) -> str:
    """ "a small blue striped mailbox in the middle": every attribute the ref carries."""
    words: list[str] = []
    if ref.size and ref.size != "medium":
        words.append(ref.size)
    if ref.color:
        words.append(ref.color)
    if ref.material and ref.material != "plain":
        words.append(material_adj(ref.material, rnd))
    words.append(ref.name)
    text = f"{article(words[0])} {' '.join(words)}"
    if with_slot and ref.slot:
        text += f" {slot_at(ref.slot, rnd)}"
    return text


def definite_np(ref: Ref, rnd: random.Random, slot: bool = True, color: bool = True) -> str:
    """ "the red bicycle on the left": a reference to an object already in the image."""
    words = ["the"]
    if color and ref.color:
        words.append(ref.color)
    words.append(ref.name)
    text = " ".join(words)
    if slot and ref.slot:
        text += f" {slot_at(ref.slot, rnd)}"
    return text


def join_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def resolve(ref: Ref, items: Sequence[T]) -> T | None:
    """The item (a Ref or a scene Obj) that `ref` designates, or None if none has its name.

    Attributes narrow the choice only while some candidate is left, the way a person reads
    "the red cat on the left" when the cat is in fact orange: the name decides.
    """
    candidates = [item for item in items if getattr(item, "name", None) == ref.name]
    for attr in ("slot", "color", "size", "material"):
        wanted = getattr(ref, attr)
        if wanted is None or len(candidates) <= 1:
            continue
        narrowed = [item for item in candidates if getattr(item, attr) == wanted]
        if narrowed:
            candidates = narrowed
    return candidates[0] if candidates else None
