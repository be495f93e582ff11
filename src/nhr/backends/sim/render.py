"""Scene -> pixels, and PNG bytes that carry their own ground truth.

Pixels are a pure function of (scene, width, height): the editor re-renders the edited scene
and every region it did not touch comes out identical, so pixel diffs behave like a real
editor's (local edits change a local region, global ones change everything). Rendering is
numpy + PIL only and stays in the millisecond range at the quick-start size.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from PIL.PngImagePlugin import PngInfo

from nhr.backends.sim.world import BACKGROUNDS, COLORS, SLOTS, Obj, Scene

META_KEY = "nhr_sim"  # PNG text chunk holding the JSON ground truth

SIZE_FRACTION: dict[str, float] = {"small": 0.15, "medium": 0.23, "large": 0.33}
_ASPECT: dict[str, float] = {  # width / height of each object's box
    "bicycle": 1.5,
    "mailbox": 0.7,
    "cat": 1.25,
    "dog": 1.3,
    "lamp": 0.6,
    "vase": 0.65,
    "chair": 0.75,
    "umbrella": 1.1,
    "ball": 1.0,
    "teapot": 1.25,
    "clock": 1.0,
    "book": 0.8,
    "plant": 0.8,
    "kite": 0.8,
}
_DARK = np.array([38, 36, 40], np.float32)
_LEAF = np.array([60, 140, 60], np.float32)
_OUTLINED = {"outline", "pop-art", "sketch", "anime"}

# Shapes in a unit box: (layer, primitive, geometry, extra). Layer "body" takes the object's
# colour and material; "dark" and "leaf" are fixed colours.
_SHAPES: dict[str, list[tuple[Any, ...]]] = {
    "ball": [("body", "ellipse", (0.02, 0.02, 0.98, 0.98))],
    "clock": [
        ("body", "ellipse", (0.02, 0.02, 0.98, 0.98)),
        ("dark", "line", [(0.5, 0.5), (0.5, 0.16)], 0.07),
        ("dark", "line", [(0.5, 0.5), (0.78, 0.5)], 0.07),
        ("dark", "ring", (0.02, 0.02, 0.98, 0.98), 0.05),
    ],
    "vase": [
        ("body", "ellipse", (0.08, 0.34, 0.92, 1.0)),
        ("body", "rect", (0.33, 0.08, 0.67, 0.5)),
        ("body", "ellipse", (0.24, 0.0, 0.76, 0.14)),
    ],
    "lamp": [
        ("body", "poly", [(0.12, 0.5), (0.88, 0.5), (0.68, 0.04), (0.32, 0.04)]),
        ("dark", "rect", (0.45, 0.5, 0.55, 0.9)),
        ("body", "rect", (0.24, 0.88, 0.76, 1.0)),
    ],
    "mailbox": [
        ("body", "rect", (0.1, 0.25, 0.9, 0.62)),
        ("body", "chord", (0.1, 0.02, 0.9, 0.48), 180, 360),
        ("dark", "rect", (0.42, 0.62, 0.58, 1.0)),
        ("dark", "rect", (0.84, 0.08, 0.92, 0.3)),
    ],
    "chair": [
        ("body", "rect", (0.2, 0.0, 0.8, 0.15)),
        ("body", "rect", (0.2, 0.0, 0.31, 0.56)),
        ("body", "rect", (0.69, 0.0, 0.8, 0.56)),
        ("body", "rect", (0.1, 0.5, 0.9, 0.64)),
        ("body", "rect", (0.14, 0.64, 0.25, 1.0)),
        ("body", "rect", (0.75, 0.64, 0.86, 1.0)),
    ],
    "umbrella": [
        ("body", "chord", (0.0, 0.04, 1.0, 0.96), 180, 360),
        ("dark", "rect", (0.47, 0.5, 0.53, 0.94)),
        ("dark", "rect", (0.34, 0.9, 0.53, 0.96)),
    ],
    "teapot": [
        ("body", "ellipse", (0.14, 0.3, 0.8, 1.0)),
        ("body", "ellipse", (0.34, 0.14, 0.6, 0.36)),
        ("body", "poly", [(0.74, 0.62), (1.0, 0.3), (0.95, 0.26), (0.72, 0.48)]),
        ("dark", "ring", (0.0, 0.42, 0.26, 0.82), 0.06),
    ],
    "bicycle": [
        ("dark", "ring", (0.0, 0.44, 0.4, 1.0), 0.07),
        ("dark", "ring", (0.6, 0.44, 1.0, 1.0), 0.07),
        ("body", "line", [(0.2, 0.72), (0.42, 0.42), (0.76, 0.42), (0.8, 0.72)], 0.13),
        ("body", "line", [(0.42, 0.42), (0.5, 0.72), (0.2, 0.72)], 0.13),
        ("body", "line", [(0.76, 0.42), (0.72, 0.18)], 0.1),
        ("body", "chord", (0.56, 0.36, 1.0, 0.8), 180, 360),
        ("dark", "rect", (0.32, 0.28, 0.52, 0.36)),
    ],
    "cat": [
        ("body", "ellipse", (0.08, 0.45, 0.76, 1.0)),
        ("body", "ellipse", (0.54, 0.15, 0.96, 0.6)),
        ("body", "poly", [(0.57, 0.3), (0.62, 0.0), (0.73, 0.22)]),
        ("body", "poly", [(0.77, 0.22), (0.88, 0.0), (0.93, 0.3)]),
        ("body", "line", [(0.12, 0.75), (0.02, 0.3)], 0.08),
        ("dark", "ellipse", (0.64, 0.32, 0.7, 0.4)),
        ("dark", "ellipse", (0.8, 0.32, 0.86, 0.4)),
    ],
    "dog": [
        ("body", "ellipse", (0.04, 0.38, 0.74, 0.8)),
        ("body", "rect", (0.12, 0.66, 0.22, 1.0)),
        ("body", "rect", (0.54, 0.66, 0.64, 1.0)),
        ("body", "ellipse", (0.56, 0.1, 0.98, 0.54)),
        ("dark", "poly", [(0.58, 0.16), (0.66, 0.12), (0.62, 0.48)]),
        ("body", "line", [(0.06, 0.5), (0.0, 0.22)], 0.07),
        ("dark", "ellipse", (0.82, 0.26, 0.88, 0.34)),
    ],
    "book": [
        ("body", "rect", (0.08, 0.1, 0.92, 0.9)),
        ("dark", "rect", (0.08, 0.1, 0.17, 0.9)),
        ("dark", "rect", (0.3, 0.3, 0.8, 0.36)),
    ],
    "plant": [
        ("leaf", "ellipse", (0.12, 0.04, 0.54, 0.6)),
        ("leaf", "ellipse", (0.46, 0.0, 0.88, 0.58)),
        ("leaf", "ellipse", (0.3, 0.16, 0.7, 0.64)),
        ("body", "poly", [(0.2, 0.55), (0.8, 0.55), (0.68, 1.0), (0.32, 1.0)]),
    ],
    "kite": [
        ("body", "poly", [(0.5, 0.0), (0.92, 0.38), (0.5, 0.8), (0.08, 0.38)]),
        ("dark", "line", [(0.5, 0.0), (0.5, 0.8)], 0.03),
        ("dark", "line", [(0.08, 0.38), (0.92, 0.38)], 0.03),
        ("dark", "line", [(0.5, 0.8), (0.4, 0.9), (0.55, 1.0)], 0.03),
    ],
}

# Sky (top, horizon) by time of day; lighting multiplier outdoors and indoors.
_SKY: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "morning": ((150, 190, 235), (250, 205, 165)),
    "day": ((95, 160, 235), (190, 222, 250)),
    "sunset": ((110, 70, 140), (250, 140, 70)),
    "night": ((8, 12, 38), (35, 42, 80)),
}
_LIGHT_OUT: dict[str, tuple[float, float, float]] = {
    "morning": (1.02, 0.96, 0.9),
    "day": (1.0, 1.0, 1.0),
    "sunset": (1.05, 0.82, 0.68),
    "night": (0.5, 0.53, 0.74),
}
_LIGHT_IN: dict[str, tuple[float, float, float]] = {
    "morning": (1.03, 0.95, 0.84),
    "day": (1.0, 1.0, 1.0),
    "sunset": (1.06, 0.84, 0.66),
    "night": (0.62, 0.58, 0.72),
}
_VEGETATION: dict[str, tuple[int, int, int]] = {
    "spring": (160, 218, 112),
    "summer": (46, 128, 48),
    "autumn": (208, 112, 34),
    "winter": (234, 238, 244),
}
_SEASON_TINT: dict[str, tuple[tuple[int, int, int], float]] = {
    "spring": ((120, 200, 90), 0.1),
    "summer": ((0, 0, 0), 0.0),
    "autumn": ((190, 110, 40), 0.18),
    "winter": ((240, 242, 248), 0.6),
}


# --- small helpers ---------------------------------------------------------------------------


def _hash01(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A cheap, vectorised, deterministic hash of integer grids to [0, 1)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (seed & 0xFFFFFF)
    h = (h * 2654435761) & 0xFFFFFFFF
    return ((h >> 8) & 0xFFFF).astype(np.float32) / 65536.0


def _smooth_noise(seed: int, width: int, height: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], bilinearly upsampled from a small random grid."""
    grid = np.random.default_rng(seed & 0xFFFFFFFF).uniform(-1, 1, (cells, cells))
    image = Image.fromarray(grid.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(image, dtype=np.float32)


def _mix(a: np.ndarray, b: Any, t: float) -> np.ndarray:
    return a * (1.0 - t) + np.asarray(b, np.float32) * t


def object_box(obj: Obj, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of an object; may extend past the image border."""
    base = min(width, height) * SIZE_FRACTION.get(obj.size, 0.23) * obj.scale
    aspect = _ASPECT.get(obj.name, 1.0)
    bw, bh = max(2, round(base * aspect**0.5)), max(2, round(base / aspect**0.5))
    fx, fy = SLOTS.get(obj.slot, (0.5, 0.56))
    cx, cy = (fx + obj.jx) * width, (fy + obj.jy) * height
    x0, y0 = round(cx - bw / 2), round(cy - bh / 2)
    return x0, y0, x0 + bw, y0 + bh


@lru_cache(maxsize=4096)
def _shape_masks(name: str, w: int, h: int) -> dict[str, np.ndarray]:
    """Boolean masks per layer for one object shape at one box size (cached: read-only)."""
    layers: dict[str, Image.Image] = {}
    for part in _SHAPES.get(name, _SHAPES["ball"]):
        layer, kind, geom = part[0], part[1], part[2]
        image = layers.setdefault(layer, Image.new("L", (w, h), 0))
        draw = ImageDraw.Draw(image)
        sx, sy = w - 1, h - 1
        if kind in ("ellipse", "rect", "chord", "ring"):
            box = [geom[0] * sx, geom[1] * sy, geom[2] * sx, geom[3] * sy]
            if kind == "ellipse":
                draw.ellipse(box, fill=255)
            elif kind == "rect":
                draw.rectangle(box, fill=255)
            elif kind == "chord":
                draw.chord(box, part[3], part[4], fill=255)
            else:
                draw.ellipse(box, outline=255, width=max(1, round(part[3] * min(w, h))))
        else:
            points = [(x * sx, y * sy) for x, y in geom]
            if kind == "poly":
                draw.polygon(points, fill=255)
            else:
                draw.line(points, fill=255, width=max(1, round(part[3] * min(w, h))))
    masks = {k: np.asarray(v) > 0 for k, v in layers.items()}
    for mask in masks.values():
        mask.flags.writeable = False
    return masks


def _pattern(rgb: np.ndarray, material: str, strength: float, w: int, h: int) -> np.ndarray:
    """The object's surface: its colour with a material pattern, shaded top to bottom."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = (1.08 - 0.18 * yy / max(1, h))[..., None]
    base = np.broadcast_to(rgb, (h, w, 3)) * shade
    period = max(2, int(min(w, h) / 5))
    second = base * 0.55 if float(rgb.mean()) > 90 else _mix(base, 255, 0.5)
    if material == "striped":
        on = (((xx + yy) // period) % 2 == 0)[..., None]
        pattern = np.where(on, base, second)
    elif material == "dotted":
        cx, cy = xx % period - period / 2, yy % period - period / 2
        on = (cx * cx + cy * cy < (period * 0.3) ** 2)[..., None]
        pattern = np.where(on, _mix(base, 255, 0.75), base)
    elif material == "checkered":
        on = (((xx // period) + (yy // period)) % 2 == 0)[..., None]
        pattern = np.where(on, base, _mix(base, 255, 0.5))
    elif material == "wooden":
        grain = 1 + 0.14 * np.sin((yy + 2.5 * np.sin(xx / max(1, period / 2))) / max(1, period / 3))
        pattern = _mix(base, (140, 92, 50), 0.5) * grain[..., None]
    elif material == "metal":
        shine = 0.78 + 0.45 * np.cos(np.pi * (xx / max(1, w) - 0.35)) ** 2
        pattern = _mix(base, (176, 180, 188), 0.45) * shine[..., None]
    elif material == "glass":
        streak = ((xx - yy * 0.5) % max(3, w) < max(1, w / 8))[..., None]
        pattern = np.where(streak, _mix(base, 255, 0.7), _mix(base, 255, 0.3))
    else:
        return base
    return base + (pattern - base) * strength


def _paste(
    canvas: np.ndarray,
    box: tuple[int, int, int, int],
    mask: np.ndarray,
    color: np.ndarray,
    alpha: float,
) -> None:
    """Alpha-composite `color` (h, w, 3 array or an RGB triple) through `mask` into `canvas`."""
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if cx0 >= cx1 or cy0 >= cy1 or alpha <= 0:
        return
    m = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    a = (m.astype(np.float32) * alpha)[..., None]
    if color.ndim == 3:
        color = color[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    region = canvas[cy0:cy1, cx0:cx1]
    region *= 1 - a
    region += color * a


def _edge(mask: np.ndarray, thickness: int) -> np.ndarray:
    inner = mask.copy()
    for _ in range(thickness):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


# --- layers ----------------------------------------------------------------------------------


def _background(
    attrs: dict[str, str], width: int, height: int, seed: int
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """The empty scene (and, indoors, the window box through which the outside shows)."""
    kind = BACKGROUNDS.get(attrs["background"], BACKGROUNDS["park"])
    season = attrs["season"]
    top, low = (np.array(c, np.float32) for c in _SKY.get(attrs["time"], _SKY["day"]))
    veg = np.array(_VEGETATION.get(season, _VEGETATION["summer"]), np.float32)
    tint, amount = _SEASON_TINT.get(season, _SEASON_TINT["summer"])
    if kind.vegetated:
        ground = _mix(np.array(kind.lower, np.float32), veg, 0.75)
    else:
        ground = _mix(np.array(kind.lower, np.float32), tint, amount)
    image = np.empty((height, width, 3), np.float32)
    horizon = int(height * (0.62 if kind.indoor else 0.45))
    if kind.indoor:
        image[:horizon] = kind.upper
        image[horizon:] = kind.lower
    else:
        t = np.linspace(0, 1, max(1, horizon), dtype=np.float32)[:, None, None]
        image[:horizon] = top * (1 - t) + low * t
        depth = np.linspace(0.9, 1.06, height - horizon, dtype=np.float32)[:, None, None]
        image[horizon:] = ground * depth

    pil = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    window = _decor(draw, attrs, kind.indoor, width, height, horizon, veg, ground, seed)
    image = np.asarray(pil, dtype=np.float32).copy()
    if window is not None:
        x0, y0, x1, y1 = window
        inner = image[y0:y1, x0:x1]
        split = y0 + int((y1 - y0) * 0.6)
        t = np.linspace(0, 1, max(1, split - y0), dtype=np.float32)[:, None, None]
        inner[: split - y0] = top * (1 - t) + low * t
        inner[split - y0 :] = veg
    if attrs["time"] == "night":
        sky = image[: (window[3] if window else horizon)]
        yy, xx = np.mgrid[0 : sky.shape[0], 0:width]
        stars = _hash01(xx, yy, seed + 7) < 0.004
        if window is not None:
            stars &= (xx >= window[0]) & (xx < window[2]) & (yy >= window[1])
        sky[stars] = (235, 235, 210)
    amplitude = {"photo": 12.0, "flat": 3.0, "pixel-art": 2.0}.get(attrs["style"], 7.0)
    image += (_smooth_noise(seed, width, height, 14) * amplitude)[..., None]
    return image, window


def _decor(
    draw: ImageDraw.ImageDraw,
    attrs: dict[str, str],
    indoor: bool,
    w: int,
    h: int,
    horizon: int,
    veg: np.ndarray,
    ground: np.ndarray,
    seed: int,
) -> tuple[int, int, int, int] | None:
    """Kind-specific furniture of the background; returns the window box for indoor kinds.

    Coordinates are fractions of the image; outdoors, y fractions are offsets from the horizon.
    """
    bg = attrs["background"]
    hz = horizon / h

    def rect(x0: float, y0: float, x1: float, y1: float, fill: Any) -> None:
        draw.rectangle([int(w * x0), int(h * y0), int(w * x1), int(h * y1)], fill=tuple(fill))

    def oval(x0: float, y0: float, x1: float, y1: float, fill: Any) -> None:
        draw.ellipse([int(w * x0), int(h * y0), int(w * x1), int(h * y1)], fill=tuple(fill))

    vegc = [int(v) for v in veg]
    if indoor:
        if bg == "kitchen":
            rect(0, 0.5, 1, hz, (200, 200, 206))
            rect(0, 0.06, 0.3, 0.3, (180, 150, 110))
        elif bg == "office":
            rect(0.04, 0.48, 0.42, 0.56, (120, 96, 72))
            rect(0.7, 0.1, 0.96, 0.34, (230, 232, 236))
        elif bg == "bedroom":
            rect(0.56, 0.42, 0.98, 0.66, (236, 236, 244))
            rect(0.56, 0.3, 0.6, 0.66, (120, 84, 60))
        else:  # library: shelves of coloured spines on both walls
            palette = list(COLORS.values())
            for row in range(4):
                for col in range(12):
                    x0 = (0 if col < 6 else 0.72) + 0.045 * (col % 6)
                    y0 = 0.06 + row * 0.13
                    rect(x0, y0, x0 + 0.035, y0 + 0.1, palette[(col * 5 + row * 3) % len(palette)])
        box = (int(w * 0.36), int(h * 0.06), int(w * 0.64), int(h * 0.34))
        draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 1, box[3] + 1], fill=(90, 80, 70))
        return box

    # Every outdoor kind has shrubs along the horizon, so the season always shows.
    for i in range(7):
        x = i * 0.15 + 0.04 + 0.02 * ((seed >> i) % 3)
        oval(x - 0.045, hz - 0.045, x + 0.045, hz + 0.022, [int(v * 0.85) for v in veg])
    if bg == "street":
        for i in range(6):
            top = hz - 0.12 - 0.06 * ((seed >> i) % 3)
            rect(i / 6, top, (i + 1) / 6 - 0.005, hz, (150 + 12 * (i % 3), 120, 110))
        rect(0, 0.68, 1, 0.86, (80, 80, 86))
        for i in range(0, 10, 2):
            rect(i / 10, 0.765, (i + 1) / 10, 0.775, (230, 220, 120))
    elif bg in ("beach", "harbor"):
        rect(0, hz, 1, hz + 0.12, (56, 124, 184))
        if bg == "harbor":  # planks of the quay
            for i in range(12):
                y = hz + 0.14 + 0.035 * i
                rect(0, y, 1, y + 0.006, [int(v * 0.7) for v in ground])
    elif bg == "forest":
        for i in range(9):
            x = (i + 0.5) / 9
            rect(x - 0.012, hz - 0.05, x + 0.012, hz + 0.02, (90, 60, 40))
            draw.polygon(
                [
                    (w * (x - 0.07), h * (hz - 0.04)),
                    (w * (x + 0.07), h * (hz - 0.04)),
                    (w * x, h * (hz - 0.3)),
                ],
                fill=tuple(vegc),
            )
    elif bg == "park":
        oval(0.3, 0.6, 1.2, 1.3, (196, 180, 150))  # a path
        for x in (0.12, 0.9):
            rect(x - 0.012, hz - 0.1, x + 0.012, hz + 0.03, (90, 60, 40))
            oval(x - 0.08, hz - 0.24, x + 0.08, hz - 0.06, vegc)
    elif bg == "garden":
        rect(0, hz - 0.08, 1, hz, [int(v * 0.75) for v in veg])  # a hedge
        if attrs["season"] != "winter":
            for i in range(24):
                x = ((i * 37 + seed) % 100) / 100
                y = hz + 0.05 + ((i * 53 + seed) % 45) / 100
                oval(x - 0.008, y - 0.008, x + 0.008, y + 0.008, (230, 80 + (i * 40) % 150, 120))
    elif bg == "desert":
        oval(-0.2, hz - 0.06, 0.6, hz + 0.2, [int(v * 0.92) for v in ground])
        oval(0.4, hz - 0.04, 1.3, hz + 0.2, [int(v * 0.96) for v in ground])
    elif bg == "meadow":
        oval(-0.3, hz - 0.1, 0.7, hz + 0.25, [int(v * 0.85) for v in veg])
    return None


def _draw_object(
    canvas: np.ndarray, obj: Obj, style: str, width: int, height: int, seed: int
) -> None:
    x0, y0, x1, y1 = object_box(obj, width, height)
    w, h = x1 - x0, y1 - y0
    rgb = np.array(COLORS.get(obj.color, COLORS["gray"]), np.float32)
    if obj.tint in COLORS:
        rgb = _mix(rgb, COLORS[obj.tint], 0.5)
    if style in ("anime", "pop-art"):
        rgb = np.clip(rgb.mean() + (rgb - rgb.mean()) * 1.3, 0, 255)
    names = [(obj.name, obj.fade)]
    if obj.blend_name:
        names = [(obj.blend_name, obj.fade * 0.5), (obj.name, obj.fade * 0.5)]
    for name, fade in names:
        masks = _shape_masks(name, w, h)
        body_alpha = fade * (1 - 0.38 * obj.mat_strength if obj.material == "glass" else 1.0)
        if "leaf" in masks:
            _paste(canvas, (x0, y0, x1, y1), masks["leaf"], _LEAF, fade)
        if "body" in masks:
            fill = _pattern(rgb, obj.material, obj.mat_strength, w, h)
            _paste(canvas, (x0, y0, x1, y1), masks["body"], fill, body_alpha)
        if "dark" in masks:
            _paste(canvas, (x0, y0, x1, y1), masks["dark"], _DARK, fade)
        # Every object gets a contour: a full one in outlined styles, a soft one elsewhere (the
        # shading a real render has), so even a pale object on a pale ground is visible to the
        # pixel-level check when it is removed.
        union = np.zeros((h, w), bool)
        for mask in masks.values():
            union |= mask
        edge = _edge(union, max(1, min(width, height) // 160))
        _paste(canvas, (x0, y0, x1, y1), edge, _DARK, fade if style in _OUTLINED else 0.6 * fade)
    if obj.garbled:
        _garble(canvas, (x0, y0, x1, y1), seed + 31 * obj.id)


def _garble(canvas: np.ndarray, box: tuple[int, int, int, int], seed: int) -> None:
    """Scramble an object: shuffle its box in tiles and swap colour channels in some."""
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3])
    if x1 - x0 < 3 or y1 - y0 < 3:
        return
    region = canvas[y0:y1, x0:x1]
    n = 3
    th, tw = (y1 - y0) // n, (x1 - x0) // n
    tiles = [
        region[i * th : (i + 1) * th, j * tw : (j + 1) * tw].copy()
        for i in range(n)
        for j in range(n)
    ]
    order = np.random.default_rng(seed & 0xFFFFFFFF).permutation(len(tiles))
    for k, src in enumerate(order):
        i, j = divmod(k, n)
        tile = tiles[src]
        if k % 3 == 0:
            tile = tile[..., ::-1]
        region[i * th : (i + 1) * th, j * tw : (j + 1) * tw] = tile


def _weather(image: np.ndarray, weather: str, seed: int) -> None:
    if weather == "clear":
        return
    height, width = image.shape[:2]
    yy = np.arange(height)[:, None]
    xx = np.arange(width)[None, :]
    if weather in ("rain", "storm"):
        image *= 0.85 if weather == "rain" else 0.58
        step = max(3, width // 45)
        length = max(3, height // 20)
        u = xx + yy // 3
        on = (u % step == 0) & (
            _hash01(u // step, yy // length, seed) < (0.45 if weather == "rain" else 0.7)
        )
        image[on] = image[on] * 0.35 + np.array([175, 185, 205], np.float32) * 0.65
    elif weather == "snow":
        cell = max(1, width // 170)
        on = _hash01(xx // cell, yy // cell, seed) < 0.035
        image[on] = (248, 248, 252)
    elif weather == "fog":
        f = (0.58 - 0.22 * (yy / max(1, height)))[..., None].astype(np.float32)
        image *= 1 - f
        image += np.array([206, 208, 214], np.float32) * f


def _stylise(image: np.ndarray, style: str) -> np.ndarray:
    height, width = image.shape[:2]
    if style in ("photo", "noir"):
        yy, xx = np.ogrid[0:height, 0:width]
        r2 = ((xx / max(1, width) - 0.5) ** 2 + (yy / max(1, height) - 0.5) ** 2).astype(np.float32)
        image *= (1 - 0.5 * r2)[..., None]
    if style == "outline":
        return _mix(image, 255, 0.15)
    if style == "pastel":
        return _mix(image, 255, 0.35)
    if style == "noir":  # high-contrast grey with a trace of colour
        gray = image @ np.array([0.3, 0.59, 0.11], np.float32)
        gray = (gray - 128) * 1.4 + 118
        return _mix(np.repeat(gray[..., None], 3, axis=2), image, 0.3)
    if style == "sketch":  # light pencil greys, lightly coloured
        gray = image @ np.array([0.3, 0.59, 0.11], np.float32)
        gray = 255 - (255 - gray) * 0.75
        return _mix(np.repeat(gray[..., None], 3, axis=2), image, 0.3)
    if style in ("pop-art", "anime"):
        mean = image.mean(axis=2, keepdims=True)
        image = mean + (image - mean) * 1.35
        if style == "pop-art":
            image = np.floor(image.clip(0, 255) / 64) * 64 + 32
        return image
    if style in ("watercolor", "oil"):
        pil = Image.fromarray(image.clip(0, 255).astype(np.uint8))
        radius = max(1.0, min(width, height) / (160 if style == "watercolor" else 320))
        pil = pil.filter(ImageFilter.BoxBlur(radius))
        image = np.asarray(pil, dtype=np.float32)
        if style == "watercolor":
            return _mix(image, 255, 0.12)
        return np.floor(image / 32) * 32 + 16
    if style == "pixel-art":
        block = max(2, round(min(width, height) / 32))
        small = Image.fromarray(image.clip(0, 255).astype(np.uint8)).resize(
            (max(1, width // block), max(1, height // block)), Image.Resampling.BOX
        )
        return np.asarray(small.resize((width, height), Image.Resampling.NEAREST), dtype=np.float32)
    return image


def _core(scene: Scene, attrs: dict[str, str], width: int, height: int) -> np.ndarray:
    """Background, objects, weather, lighting and style: everything but edit marks."""
    image, window = _background(attrs, width, height, scene.texture_seed)
    if scene.implausible:
        image = image[::-1].copy()
    indoor = BACKGROUNDS.get(attrs["background"], BACKGROUNDS["park"]).indoor
    for obj in sorted(scene.objects, key=lambda o: (SLOTS.get(o.slot, (0, 0.5))[1], o.id)):
        _draw_object(image, obj, attrs["style"], width, height, scene.texture_seed)
    if indoor and window is not None:
        x0, y0, x1, y1 = window
        _weather(image[y0:y1, x0:x1], attrs["weather"], scene.texture_seed)
    else:
        _weather(image, attrs["weather"], scene.texture_seed)
    light = (_LIGHT_IN if indoor else _LIGHT_OUT).get(attrs["time"], (1.0, 1.0, 1.0))
    image *= np.array(light, np.float32)
    return _stylise(image, attrs["style"])


def _marks(image: np.ndarray, scene: Scene) -> None:
    height, width = image.shape[:2]
    side = min(width, height)
    for mark in scene.marks:
        kind = mark.get("kind")
        if kind in ("blob", "retexture"):
            cx, cy, r = mark["x"] * width, mark["y"] * height, max(1.5, mark["r"] * side)
            x0, y0 = max(0, int(cx - r * 1.6)), max(0, int(cy - r * 1.6))
            x1, y1 = min(width, int(cx + r * 1.6) + 1), min(height, int(cy + r * 1.6) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            rnd = np.random.default_rng(mark["seed"] & 0xFFFFFFFF)
            region = image[y0:y1, x0:x1]
            if kind == "blob":
                mask = np.zeros(yy.shape, bool)
                for dx, dy, rr in zip(
                    rnd.uniform(-0.6, 0.6, 5), rnd.uniform(-0.6, 0.6, 5), rnd.uniform(0.4, 0.75, 5)
                ):
                    mask |= (xx - cx - dx * r) ** 2 + (yy - cy - dy * r) ** 2 < (rr * r) ** 2
                color = np.array(mark["color"], np.float32)
                texture = rnd.normal(0, 35, yy.shape + (3,)).astype(np.float32)
                region[mask] = (color + texture)[mask]
            else:
                mask = ((xx - cx) / r) ** 2 + ((yy - cy) / (r * 0.8)) ** 2 < 1
                lum = float(region[mask].mean()) if mask.any() else 128.0
                if lum > 110:
                    region[mask] *= 0.6
                else:
                    region[mask] += 70
        elif kind == "speckle":
            yy = np.arange(height)[:, None]
            xx = np.arange(width)[None, :]
            on = ((xx + yy) % 2 == 0) & (_hash01(xx, yy, mark["seed"]) < 2 * mark["density"])
            values = image[on]
            image[on] = np.where(values < 128, values + 110, values - 110)


def render(scene: Scene, width: int, height: int) -> np.ndarray:
    """The scene as an (height, width, 3) uint8 array."""
    width, height = max(4, int(width)), max(4, int(height))
    image = _core(scene, scene.attrs(), width, height)
    if scene.blend:
        old = scene.attrs() | dict(scene.blend.get("attrs", {}))
        weight = float(scene.blend.get("weight", 0.5))
        image = _mix(image, _core(scene, old, width, height), weight)
    _marks(image, scene)
    if scene.drift:
        image += np.array(scene.drift, np.float32)
    if scene.perturb_seed is not None:
        seed = scene.perturb_seed
        image += (_smooth_noise(seed, width, height, 6) * 4.0)[..., None]
        image += (
            np.random.default_rng(seed & 0xFFFFFFFF)
            .integers(-2, 3, (height, width, 1), dtype=np.int8)
            .astype(np.float32)
        )
    return np.rint(image.clip(0, 255)).astype(np.uint8)


# --- PNG with embedded truth -----------------------------------------------------------------


def encode_png(pixels: np.ndarray, meta: dict[str, Any]) -> bytes:
    """PNG bytes with `meta` as compressed JSON text; byte-identical for identical inputs."""
    info = PngInfo()
    info.add_text(META_KEY, json.dumps(meta, sort_keys=True, separators=(",", ":")), zip=True)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def open_png(data: bytes) -> Image.Image:
    """Open image bytes; raises ValueError when they are not an image."""
    try:
        return Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises several types for garbage input
        raise ValueError(f"not a readable image: {exc}") from exc


def read_meta(data: bytes) -> dict[str, Any] | None:
    """The embedded ground truth of a simulator PNG, or None for any other image."""
    try:
        image = open_png(data)
        text = image.info.get(META_KEY)
        if text is None:
            image.load()
            text = getattr(image, "text", {}).get(META_KEY)
        return json.loads(text) if text else None
    except (ValueError, OSError):
        return None


def decode_pixels(data: bytes) -> np.ndarray:
    return np.asarray(open_png(data).convert("RGB"))
