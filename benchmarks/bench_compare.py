"""`nhr bench --compare` on the simulator: the simulated editor against a deliberately
degraded one, on the test fixtures of tests/test_bench.py (4 sources x 11 GEdit task types,
4 x 9 ImgEdit categories, 3 seeds), judged by the plain simulated judge and by the
`tuned-gemini-2.0-flash` profile. Prints, per judge and benchmark, A -> B and B - A with its
paired-bootstrap 95 % interval (2000 rounds, seed 0): the figures docs/bench.md and the README
quote.

    python benchmarks/bench_compare.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml
from _common import ROOT

from nhr.bench import benchmark_module
from nhr.bench.compare import compare
from nhr.bench.runner import run_bench
from nhr.config import parse_config

# The fixtures' data and configs come from the tests: one definition of both.
sys.path.insert(0, str(ROOT / "tests"))
import test_bench as fixtures  # noqa: E402

PLAIN = "{backend: sim, model: sim-validator}"
TUNED = "{backend: sim, model: sim-validator, judge: tuned-gemini-2.0-flash}"


class _Folders:
    """What the fixtures ask of pytest's tmp_path_factory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name, dir=self.root))


def _unwrapped(fixture):
    return getattr(fixture, "__wrapped__", None) or fixture._get_wrapped_function()


def config(editor: str, judge: str):
    text = fixtures.MODELS.replace("EDITOR", editor).replace(PLAIN, judge)
    return parse_config(yaml.safe_load(text))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nhr-bench-compare-") as work:
        folders = _Folders(Path(work))
        data = {
            "gedit": (_unwrapped(fixtures.gedit_data)(folders), "G_O"),
            "imgedit": (_unwrapped(fixtures.imgedit_data)(folders), "score"),
        }
        for judge_name, judge in (("plain judge", PLAIN), ("tuned-gemini-2.0-flash", TUNED)):
            for name, (location, metric) in data.items():
                module = benchmark_module(name)
                out = folders.mktemp(name)
                for folder, editor in (
                    ("a", fixtures.GOOD_EDITOR),
                    ("b", fixtures.DEGRADED_EDITOR),
                ):
                    run_bench(
                        module,
                        config(editor, judge),
                        config(fixtures.GOOD_EDITOR, judge),
                        location,
                        out / folder,
                        seeds=3,
                    )
                overall = compare(str(out / "a"), str(out / "b"))["metrics"][metric]["overall"]
                low, high = overall["ci"]
                print(
                    f"{judge_name}, {name} {metric}: {overall['a']:.2f} -> {overall['b']:.2f}, "
                    f"B - A {overall['diff']:+.2f} [{low:+.2f}, {high:+.2f}]"
                    + (" significant" if overall["significant"] else "")
                )


if __name__ == "__main__":
    main()
