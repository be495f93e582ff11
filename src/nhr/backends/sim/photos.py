"""The simulator as a photo folder, and as the describer and photo designer that read one.

`write_photo_folder` renders scenes of the simulated world and writes them as image files of
camera-like sizes and aspect ratios, each carrying its scene graph (the `nhr_sim` PNG text
chunk, nhr/backends/sim/render.py) so the editor and the judges know what it shows, exactly as
for a generated source. The ingest (nhr/sources.py) keeps PNG text chunks when it normalises
an image, so the truth survives the resize into a bucket; it is resolution independent (object
slots and sizes are fractions of the frame). `write_bad_files` adds the files a real folder
holds too: corrupt, truncated, too small, a decompression bomb, CMYK, palette, RGBA and an
EXIF-rotated photo (its pixels stored sideways, the truth describing it upright).

`describe` answers describe.txt: the photo's scene written in the grammar the generator reads,
as a VLM would describe it, sometimes leaving an object out (DESCRIBE_OMIT) -- which the
plausibility gate may then catch, since the photo no longer matches its description.
`design_edits` answers design_image.txt: edits written as the design LLM writes them, taken in
turn from the operations of the request that fit the described scene (each as often as its
weight), up to the number asked.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

from nhr.backends.sim.config import SimBackendConfig
from nhr.backends.sim.generator import build_scene
from nhr.backends.sim.grammar import PromptSpec, Ref, parse_prompt
from nhr.backends.sim.render import encode_png, read_meta, render
from nhr.backends.sim.world import BACKGROUNDS, Scene, rng, scene_defects, uniform

# Width:height of the photos written, as cameras and phones take them.
ASPECTS: tuple[tuple[int, int], ...] = ((4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (1, 1))
DESCRIBE_OMIT = 0.05  # chance the describer leaves a given object out of its description
GENERIC_DESCRIPTION = "A photo of an everyday scene."  # what it says of an image without truth
_FIELD = r"^\s*{}\b[^:\n]*:\s*(.*?)\s*$"  # a label, maybe more words, a colon
_WEIGHTED = re.compile(r"([a-z_]+)\s*(?:\(\s*weight\s*(\d+)\s*\))?")


# --- the photo folder ----------------------------------------------------------------------


def photo_scene(seed: int, index: int) -> Scene:
    """The scene of photo `index`: mostly photographs, 1-4 objects, no generator defects."""
    from nhr.backends.sim.llm import _sample_spec  # the design LLM's scene sampler

    rnd = rng("photo", seed, index)
    styles = ["photo"] * 4 + ["oil", "watercolor"]
    spec = _sample_spec(rnd, rnd.randint(1, 4), list(BACKGROUNDS), styles)
    return build_scene(spec, rnd)


def photo_size(seed: int, index: int, long_side: int) -> tuple[int, int]:
    w, h = rng("photo-size", seed, index).choice(ASPECTS)
    return (
        (long_side, round(long_side * h / w)) if w >= h else (round(long_side * w / h), long_side)
    )


def photo_png(seed: int, index: int, long_side: int = 1600) -> bytes:
    """Photo `index` as PNG bytes with its truth embedded."""
    scene = photo_scene(seed, index)
    width, height = photo_size(seed, index, long_side)
    record = {
        "v": 1,
        "kind": "photo",
        "seed": seed,
        "index": index,
        "scene": scene.to_dict(),
        "defects": scene_defects(scene),
    }
    return encode_png(render(scene, width, height), record)


def write_photo_folder(
    folder: str | Path, count: int, seed: int = 0, long_side: int = 1600
) -> list[Path]:
    """`count` photos as folder/photo-00000.png ...; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo-{index:05d}.png"
        path.write_bytes(photo_png(seed, index, long_side))
        paths.append(path)
    return paths


def write_bad_files(
    folder: str | Path, seed: int = 0, long_side: int = 160
) -> dict[str, str | None]:
    """The awkward files of a real folder, written into `folder`: {file name: the reason the
    ingest must reject it, or None when it must accept it (converted or rotated)}."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = 10_000  # photo indices apart from write_photo_folder's
    expected: dict[str, str | None] = {}

    def write(name: str, data: bytes, reason: str | None) -> None:
        (folder / name).write_bytes(data)
        expected[name] = reason

    def decoded(index: int) -> tuple[Image.Image, PngInfo]:
        data = photo_png(seed, base + index, long_side)
        info = PngInfo()
        info.add_text("nhr_sim", Image.open(io.BytesIO(data)).text["nhr_sim"], zip=True)
        return Image.open(io.BytesIO(data)).convert("RGB"), info

    def encoded(image: Image.Image, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, **options)
        return buffer.getvalue()

    noise = rng("bad-files", seed)
    write("corrupt.jpg", bytes(noise.getrandbits(8) for _ in range(2048)), "corrupt_image")
    whole = photo_png(seed, base, long_side)
    write("truncated.png", whole[: len(whole) // 2], "truncated_image")
    write("tiny.png", photo_png(seed, base + 1, 12), "too_small")
    write("bomb.png", _bomb_png(60_000, 60_000), "oversized_image")
    image, _ = decoded(2)
    write("cmyk.jpg", encoded(image.convert("CMYK"), format="JPEG", quality=92), None)
    image, info = decoded(3)
    write("palette.png", encoded(image.quantize(64), format="PNG", pnginfo=info), None)
    image, info = decoded(4)
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 200))
    write("rgba.png", encoded(rgba, format="PNG", pnginfo=info), None)
    landscape = next(i for i in range(5, 50) if _is_landscape(seed, base + i, long_side))
    image, info = decoded(landscape)
    # stored sideways with EXIF orientation 6 ("rotate 90 clockwise to view"), as a phone does
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = image.transpose(Image.Transpose.ROTATE_90)
    write("rotated.png", encoded(sideways, format="PNG", pnginfo=info, exif=exif), None)
    (folder / "notes.txt").write_text("not an image: the ingest lists image files only\n")
    return expected


def _is_landscape(seed: int, index: int, long_side: int) -> bool:
    width, height = photo_size(seed, index, long_side)
    return width > height


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --- describing a photo --------------------------------------------------------------------


def describe(png: bytes, key: bytes, config: SimBackendConfig) -> str:
    """The description of a photo, from its true scene (a generic one without truth)."""
    from nhr.backends.sim.llm import write_prompt

    meta = read_meta(png)
    if not meta or not meta.get("scene"):
        return GENERIC_DESCRIPTION
    scene = Scene.from_dict(meta["scene"])
    visible = [o for o in scene.objects if o.dup_of is None and o.ghost_of is None]
    kept = [
        o
        for index, o in enumerate(visible)
        if uniform("describe-omit", config.model, key, index) >= DESCRIBE_OMIT
    ]
    if visible and not kept:  # a describer names at least the one thing it sees
        kept = visible[:1]
    spec = PromptSpec(
        background=scene.background,
        time=scene.time,
        season=scene.season,
        weather=scene.weather,
        style=scene.style,
        objects=tuple(
            Ref(name=o.name, color=o.color, material=o.material, size=o.size, slot=o.slot)
            for o in kept
        ),
    )
    return write_prompt(spec, rng("describe", config.model, key))


# --- designing edits for a described photo -------------------------------------------------


def design_edits(text: str, seed: int | None, config: SimBackendConfig) -> str:
    """A JSON array of {operation, instruction, composite} for the described photo."""
    from nhr.backends.sim.llm import SUPPORTED_OPERATIONS, _design_edits

    description = _field(text, "Image description")
    listed = [
        (match.group(1), int(match.group(2) or 1))
        for part in _field(text, "Operations to use").split(",")
        if (match := _WEIGHTED.search(part.strip()))
    ]
    max_edits = int(_field(text, "Edits at most") or 6)
    rnd = rng("design-photo", config.model, seed, description, *listed)
    spec = parse_prompt(description)
    fitting = {
        operation: [(operation, *edit) for edit in _design_edits(operation, spec, rnd)]
        for operation, _ in listed
        if operation in SUPPORTED_OPERATIONS
    }
    # turns over the operations that fit, each taking `weight` turns a round, from a drawn
    # turn, until max_edits or none has an edit left
    turns = [  # spread evenly: an operation of weight w every 1/w of a round
        op
        for _, _, op in sorted(
            ((i + 0.5) / weight, order, op)
            for order, (op, weight) in enumerate(listed)
            if fitting.get(op)
            for i in range(weight)
        )
    ]
    taken = dict.fromkeys(fitting, 0)
    items = []
    start = rnd.randrange(len(turns)) if turns else 0
    while turns and len(items) < max_edits:
        before = len(items)
        for k in range(len(turns)):
            operation = turns[(start + k) % len(turns)]
            if taken[operation] < len(fitting[operation]) and len(items) < max_edits:
                _, instruction, composite = fitting[operation][taken[operation]]
                taken[operation] += 1
                items.append(
                    {"operation": operation, "instruction": instruction, "composite": composite}
                )
        if len(items) == before:
            break
    body = json.dumps(items, ensure_ascii=False)
    if rnd.random() < config.wrap_json:
        body = f"```json\n{body}\n```"
    return body


def _field(text: str, label: str) -> str:
    match = re.search(_FIELD.format(re.escape(label)), text, re.MULTILINE)
    return match.group(1) if match else ""
