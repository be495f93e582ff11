"""The simulated world: closed vocabularies, the scene graph and deterministic randomness.

Everything the generator, editor and judge must agree on lives here, so a scene written into
one image's metadata means the same thing to every other part of the simulator.
"""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# --- vocabulary ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackgroundKind:
    indoor: bool
    upper: tuple[int, int, int]  # wall (indoor) or unused (outdoor: the sky depends on time)
    lower: tuple[int, int, int]  # floor or ground
    vegetated: bool  # ground colour follows the season strongly


BACKGROUNDS: dict[str, BackgroundKind] = {
    "kitchen": BackgroundKind(True, (232, 222, 192), (176, 142, 108), False),
    "office": BackgroundKind(True, (208, 214, 222), (118, 120, 132), False),
    "bedroom": BackgroundKind(True, (216, 200, 226), (152, 112, 82), False),
    "library": BackgroundKind(True, (168, 118, 82), (112, 82, 60), False),
    "street": BackgroundKind(False, (0, 0, 0), (112, 112, 118), False),
    "beach": BackgroundKind(False, (0, 0, 0), (226, 206, 150), False),
    "forest": BackgroundKind(False, (0, 0, 0), (70, 118, 62), True),
    "park": BackgroundKind(False, (0, 0, 0), (104, 168, 82), True),
    "garden": BackgroundKind(False, (0, 0, 0), (92, 156, 72), True),
    "desert": BackgroundKind(False, (0, 0, 0), (222, 182, 122), False),
    "harbor": BackgroundKind(False, (0, 0, 0), (142, 132, 122), False),
    "meadow": BackgroundKind(False, (0, 0, 0), (132, 180, 82), True),
}

TIMES: tuple[str, ...] = ("morning", "day", "sunset", "night")
SEASONS: tuple[str, ...] = ("spring", "summer", "autumn", "winter")
WEATHERS: tuple[str, ...] = ("clear", "rain", "snow", "fog", "storm")
STYLES: tuple[str, ...] = (
    "photo",
    "flat",
    "outline",
    "pastel",
    "noir",
    "watercolor",
    "pop-art",
    "pixel-art",
    "sketch",
    "oil",
    "anime",
)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (240, 215, 40),
    "green": (50, 160, 60),
    "blue": (40, 80, 210),
    "purple": (130, 50, 170),
    "pink": (240, 130, 180),
    "brown": (120, 72, 36),
    "black": (25, 25, 28),
    "white": (245, 245, 240),
    "gray": (130, 130, 135),
    "teal": (20, 150, 150),
}

MATERIALS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "wooden", "metal", "glass")
SIZES: tuple[str, ...] = ("small", "medium", "large")

# Nine distinct spatial slots: (x, y) centre as a fraction of the image.
SLOTS: dict[str, tuple[float, float]] = {
    "top left": (0.2, 0.3),
    "top": (0.5, 0.3),
    "top right": (0.8, 0.3),
    "left": (0.2, 0.56),
    "center": (0.5, 0.56),
    "right": (0.8, 0.56),
    "bottom left": (0.2, 0.8),
    "bottom": (0.5, 0.8),
    "bottom right": (0.8, 0.8),
}

OBJECT_NAMES: tuple[str, ...] = (
    "bicycle",
    "mailbox",
    "cat",
    "dog",
    "lamp",
    "vase",
    "chair",
    "umbrella",
    "ball",
    "teapot",
    "clock",
    "book",
    "plant",
    "kite",
)

GLOBAL_ATTRS: tuple[str, ...] = ("background", "time", "season", "weather", "style")
ATTR_VALUES: dict[str, tuple[str, ...]] = {
    "background": tuple(BACKGROUNDS),
    "time": TIMES,
    "season": SEASONS,
    "weather": WEATHERS,
    "style": STYLES,
}

# Defaults the generator uses when the prompt does not say; the inversion LLM assumes the same.
DEFAULT_TIME = "day"
DEFAULT_SEASON = "summer"
DEFAULT_WEATHER = "clear"
DEFAULT_STYLE = "flat"
DEFAULT_BACKGROUND = "park"

MAX_OBJECTS = 5


# --- the scene graph -------------------------------------------------------------------------


@dataclass
class Obj:
    """One object of a scene. Fields after `jy` describe imperfect states made by defects or
    by partial edits; a clean object has them at their defaults."""

    id: int
    name: str
    color: str
    material: str = "plain"
    size: str = "medium"
    slot: str = "center"
    jx: float = 0.0  # layout jitter, fraction of the width
    jy: float = 0.0
    fade: float = 1.0  # < 1: half-removed or half-added (ghostly)
    scale: float = 1.0  # != 1: a resize that stopped half-way
    tint: str | None = None  # a recolour that stopped half-way: blended with this colour
    mat_strength: float = 1.0  # < 1: a material change that stopped half-way
    blend_name: str | None = None  # a replacement that stopped half-way: both shapes blended
    garbled: bool = False
    dup_of: int | None = None  # a duplicate the generator added by mistake
    ghost_of: int | None = None  # a faded copy left behind by a half-done move

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Obj:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Scene:
    """What an image shows. Pixels are a pure function of this record and the image size."""

    background: str = DEFAULT_BACKGROUND
    time: str = DEFAULT_TIME
    season: str = DEFAULT_SEASON
    weather: str = DEFAULT_WEATHER
    style: str = DEFAULT_STYLE
    objects: list[Obj] = field(default_factory=list)
    texture_seed: int = 0
    next_id: int = 0
    missing: list[Obj] = field(default_factory=list)  # prompt objects the generator dropped
    implausible: bool = False  # the generator drew the world upside down
    unparsed: bool = False  # the prompt could not be read; a default scene was drawn
    marks: list[dict[str, Any]] = field(default_factory=list)  # blob / speckle / retexture
    drift: list[int] | None = None  # global colour shift added by a bad edit
    blend: dict[str, Any] | None = None  # half-done global change: {"attrs": {...}, "weight": w}
    perturb_seed: int | None = None  # the editor's small VAE-like round-trip noise
    # How far this edit's flaws go, per editor error kind, in (0, 1]: a faint left-over
    # shadow or a small side change is a near-miss, a glaring one is not (truth.assess scales
    # each flaw's penalty by it; an absent kind counts as 1).
    flaw_size: dict[str, float] = field(default_factory=dict)
    finish: float = 0.0  # the editor's small imperfections of a correct edit (score points)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["objects"] = [Obj.from_dict(o) for o in data.get("objects", [])]
        values["missing"] = [Obj.from_dict(o) for o in data.get("missing", [])]
        return cls(**values)

    def copy(self) -> Scene:
        return copy.deepcopy(self)

    def get(self, obj_id: int) -> Obj | None:
        for obj in self.objects:
            if obj.id == obj_id:
                return obj
        return None

    def solid(self) -> list[Obj]:
        """Objects that are really there (not ghosts left by a half-done move)."""
        return [o for o in self.objects if o.ghost_of is None]

    def attrs(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in GLOBAL_ATTRS}

    def free_slots(self) -> list[str]:
        used = {o.slot for o in self.objects}
        return [s for s in SLOTS if s not in used]

    def new_id(self) -> int:
        self.next_id = max([self.next_id] + [o.id + 1 for o in self.objects])
        value = self.next_id
        self.next_id += 1
        return value


def new_size(current: str, value: str | None) -> str:
    """The size an object should have after a resize to `value` (a size, "+1" or "-1")."""
    if value in SIZES:
        return value
    step = 1 if value == "+1" else -1
    index = min(len(SIZES) - 1, max(0, SIZES.index(current) + step))
    return SIZES[index]


def scene_defects(scene: Scene) -> list[str]:
    """Defect kinds visible in (or, for a missing object, absent from) a scene."""
    found: list[str] = []
    if scene.missing:
        found.append("missing_object")
    if any(o.dup_of is not None for o in scene.objects):
        found.append("duplicate_object")
    if any(o.garbled for o in scene.objects):
        found.append("garbled_object")
    if scene.implausible:
        found.append("implausible")
    if scene.unparsed:
        found.append("off_prompt")
    return found


# --- deterministic randomness --------------------------------------------------------------


def digest(*parts: Any) -> bytes:
    """A stable hash of heterogeneous parts (bytes, str, numbers, None), length-prefixed."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            data = part
        elif isinstance(part, str):
            data = part.encode("utf-8")
        else:
            data = repr(part).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def seed_of(*parts: Any) -> int:
    return int.from_bytes(digest(*parts)[:8], "little")


def rng(*parts: Any) -> random.Random:
    """A Python RNG seeded from `parts`; the same parts always give the same stream."""
    return random.Random(seed_of(*parts))


def uniform(*parts: Any) -> float:
    """One U[0, 1) draw keyed by `parts` (for independent yes/no decisions)."""
    return seed_of(*parts) / 2.0**64
