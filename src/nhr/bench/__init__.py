"""`nhr bench`: score an editor on a public editing benchmark with that benchmark's judging
protocol, over several editor seeds (see docs/bench.md).

One module per benchmark (`gedit`, `imgedit`: data layout, judge prompts, parsing, the
per-item and per-seed figures, the published table layout), a shared runner (editor and
judge calls through the project's backends and request cache, state in an output folder),
`stats` (intervals) and `compare` (two editors side by side).
"""

from __future__ import annotations

import importlib
from types import ModuleType

BENCHMARKS: tuple[str, ...] = ("gedit", "imgedit")


def benchmark_module(name: str) -> ModuleType:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"nhr.bench.{name}")
