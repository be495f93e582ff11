"""What a stage sees of the world: its config, the image store, its models and its counters."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from nhr.calls import FailureWatch, WatchedBackend
from nhr.config import NhrConfig
from nhr.stats import StageStats
from nhr.store import ImageStore


@dataclass
class StageContext:
    config: NhrConfig
    images: ImageStore
    backends: Callable[[str], Any]  # role -> backend instance, built once per worker
    stats: StageStats = field(default_factory=StageStats)
    progress: Callable[[int], None] = lambda n: None
    load_checkpoint: Callable[[str], Any] = lambda key: None
    save_checkpoint: Callable[[str, Any], None] = lambda key, value: None
    # Shared by every shard of one stage run: stops the run when a backend is broken.
    watch: FailureWatch | None = None

    def backend(self, role: str) -> Any:
        backend = self.backends(role)
        return backend if self.watch is None else WatchedBackend(backend, role, self.watch)

    def model_info(self, role: str) -> str:
        """The exact model identity recorded into each row this role produced."""
        info = self.backend(role).info()
        return json.dumps(
            {"backend": info.backend, "model": info.model, "params": info.params}, sort_keys=True
        )


class Stage(Protocol):
    """A shard stage's `run(ctx, inputs)` gets one shard's input rows by table name and returns
    that shard's rows. A global stage's `run(ctx, shards)` gets `ShardInputs` and yields
    (shard, rows) in increasing shard order, each shard as soon as it is complete: its
    tables are written as they come, so no step holds every row of the run."""

    name: str
    reads: tuple[str, ...]
    global_scope: bool  # True: runs once over all shards (a barrier); False: once per shard
    roles: tuple[str, ...]  # model roles it uses (models.<role> in the config)

    def run(self, ctx: StageContext, inputs: Any) -> Any: ...


@dataclass(frozen=True)
class ShardInputs:
    """What a global stage reads: `count` shards, each read on demand (`read(shard)` gives its
    rows by table name, read again on every call), so a stage can make several passes over
    the run while holding one shard at a time."""

    count: int
    read: Callable[[int], dict[str, list[dict[str, Any]]]]

    def __iter__(self) -> Iterator[tuple[int, dict[str, list[dict[str, Any]]]]]:
        """One pass: (shard, inputs) for every shard, in order."""
        for shard in range(self.count):
            yield shard, self.read(shard)


def ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row["status"] == "ok"]


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the image header; raises ValueError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"unreadable image: {error}") from None


def store_image(images: ImageStore, data: Any) -> tuple[str, tuple[int, int]]:
    """Check that a model's output is a readable image, store it, return (digest, size).

    Used as the `parse` step of image calls, so an unreadable image is re-asked like any
    unusable answer and each image leaves memory as soon as it is stored.
    """
    from nhr.parsing import ParseError

    if not isinstance(data, bytes | bytearray):
        raise ParseError(f"expected image bytes, got {type(data).__name__}", "unreadable_image")
    try:
        size = image_size(bytes(data))
    except ValueError as error:
        raise ParseError(str(error), "unreadable_image") from None
    return images.put(bytes(data)), size


def load_rgb(data: bytes):
    """Decode image bytes to an RGB uint8 array (H, W, 3)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@cache
def template(name: str) -> str:
    """A prompt template from the package (read once per process)."""
    from importlib.resources import files

    return files("nhr.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")
