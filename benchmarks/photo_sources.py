"""Mining from a folder of photos (sources.kind: images), measured on the simulator.

Writes a folder of simulated photos (rendered scenes at camera sizes, each carrying its truth)
plus the bad files of a real folder (corrupt, truncated, tiny, a decompression bomb, CMYK,
palette, RGBA, EXIF-rotated), mines it with the quickstart's models and brief (buckets at 1/8
of the ~1 MP ones, as the quickstart's generator renders at 1/8 size), and prints what became
of every file, the survival of the stages, and the precision of the released forward edits
against the simulator's truth, overall and per operation.

    python benchmarks/photo_sources.py [--photos N] [--run-dir RUN]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from _common import quickstart, stage_rows

import nhr
from nhr.backends.sim.photos import write_bad_files, write_photo_folder
from nhr.backends.sim.truth import label_candidate
from nhr.config import _default_buckets
from nhr.pipeline import release_stage
from nhr.store import ImageStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--run-dir", type=Path, help="where to mine (default: a temp folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nhr-photos-"))
    run_dir = args.run_dir or work / "run"
    folder = work / "photos"
    write_photo_folder(folder, args.photos, long_side=200)
    write_bad_files(folder, long_side=200)
    config = quickstart()
    config["sources"] = {"kind": "images", "path": str(folder), "min_side": 64}
    config["generate"] = {"buckets": [[w // 8, h // 8] for w, h in _default_buckets()]}
    config["models"]["describer"] = {"backend": "sim", "model": "sim-vlm-7b"}
    started = time.perf_counter()
    result = nhr.mine(config, run_dir)
    seconds = time.perf_counter() - started

    sources = stage_rows(run_dir, "generate")
    print(
        f"{len(sources)} files drawn: "
        + ", ".join(
            f"{reason or 'ok'} {count}"
            for reason, count in sorted(Counter(s["reason"] for s in sources).items(), key=str)
        )
    )
    for stage in result.stats["stages"]:
        lost = {**(stage.get("dropped") or {}), **(stage.get("failed") or {})}
        print(f"  {stage['stage']:<13}{stage['rows_in']:>6} -> {stage['rows_out']:<6}{lost or ''}")

    images = ImageStore(run_dir / "images")
    release = release_stage(nhr.config.parse_config(config))
    forwards = [
        t for t in stage_rows(run_dir, release) if t["kind"] == "forward" and t["status"] == "ok"
    ]
    labels = [
        label_candidate(
            images.get(t["source_image"]), images.get(t["edited_image"]), t["instruction"]
        )
        for t in forwards
    ]
    by_operation: dict[str, list[bool]] = defaultdict(list)
    for triplet, label in zip(forwards, labels):
        by_operation[triplet["operation"]].append(label.correct)
    print("per operation (released forwards, precision):")
    for operation, correct in sorted(by_operation.items()):
        print(f"  {operation:<18}{len(correct):>4}  {sum(correct) / len(correct):.3f}")
    errors = Counter(label.error for label in labels if not label.correct)
    print(f"errors that leaked: {dict(errors.most_common())}")
    released = result.stats["dataset"]["rows"]
    precision = sum(label.correct for label in labels) / max(1, len(labels))
    print(
        f"photo sources: {len(forwards)} released forward edits, precision {precision:.3f}, "
        f"{released} released triplets, {seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
