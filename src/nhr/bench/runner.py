"""Run an editor over a benchmark's items for several seeds and score every edit with the
benchmark's judge protocol.

State lives in the output folder through `RunStore` (a local path or an object-storage URL):
every editor and judge answer goes to its request cache (`cache/`, edited images in
`images/`), so a killed bench run again with the same arguments redoes no finished call.
Units (item, seed) are processed a chunk at a time, so only a chunk's images are in memory.
Figures are recomputed from the cached answers on every run and written whole at the end:
`scores.jsonl` (one line per item and seed), `bench.json`, `tables.md` and `run.json`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHUNK = 32  # (item, seed) units edited and judged together


@dataclass(frozen=True)
class BenchItem:
    key: str
    task: str
    instruction: str
    image: bytes  # PNG: backends take PNG bytes
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def as_png(data: bytes) -> bytes:
    """PNG bytes as they are; any other image format converted to an RGB PNG."""
    if data.startswith(PNG_SIGNATURE):
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def model_label(model: Any) -> str:
    """How a model is named in tables: backend:model, with its LoRAs and (a simulated judge)
    its profile, so a base editor and its LoRA, or two judges of one model, read apart (the
    judge's name matters: scores from different judges are not comparable)."""
    label = f"{model.backend}:{model.model}"
    loras = getattr(model, "loras", None) or []
    if loras:
        label += " + " + ", ".join(f"LoRA {lora.path}" for lora in loras)
    if getattr(model, "judge", None):
        label += f" (judge {model.judge})"
    return label


def default_output(benchmark: str, editor_model: Any) -> str:
    """bench/BENCH-MODEL, the model as one folder name (a path or hub id has slashes)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", editor_model.model).strip("_.") or "editor"
    return f"bench/{benchmark}-{name}"


# What makes two benches the same: a folder keeps one bench, resumed or extended by seeds.
SAME_BENCH = ("benchmark", "data", "language", "editor_model", "judge_model")


def check_output(store: Any, identity: dict[str, Any]) -> None:
    """Refuse an output folder that holds another bench (another editor, judge, benchmark,
    data or language: its results would be overwritten) and one that cannot be written,
    before any model is called."""
    try:
        previous = json.loads(store.storage.read_bytes("run.json"))
    except FileNotFoundError:
        previous = None
    if previous is not None:
        differ = [key for key in SAME_BENCH if previous.get(key) != identity[key]]
        if differ:
            raise ValueError(
                f"{store.root} holds the results of another bench (its {', '.join(differ)} "
                "differ): pass another --output, or delete that folder to replace them"
            )
    from nhr.storage import check_writable

    check_writable(store.storage)  # fails now, not after every edit was paid for


def _cached_config(config: Any) -> Any:
    # a bench always caches its calls: that is what makes a killed bench resumable
    run = config.run.model_copy(update={"request_cache": "on"})
    return config.model_copy(update={"run": run})


def run_bench(
    benchmark: ModuleType,
    editor_config: Any,
    judge_config: Any,
    data: str,
    output: str,
    seeds: int = 3,
    language: str = "en",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Edit, judge and aggregate; returns bench.json's content (also written to `output`).
    One bench at a time per output folder (the run lock): a second would pay for every call
    again and write the same files."""
    from nhr.lock import run_lock
    from nhr.store import RunStore

    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    items = benchmark.load(data, language)  # bad data stops here, before the folder is made
    if not items:
        raise ValueError(f"no {benchmark.TITLE} items for language {language!r} in {data}")
    store = RunStore(output)
    store.check_is_directory()
    with run_lock(store):
        return _run_bench(
            benchmark, editor_config, judge_config, data, items, store, seeds, language, progress
        )


def _run_bench(
    benchmark: ModuleType,
    editor_config: Any,
    judge_config: Any,
    data: str,
    items: list[Any],
    store: Any,
    seeds: int,
    language: str,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    from nhr.backends.base import EditRequest
    from nhr.executors.base import BackendPool
    from nhr.ids import derive_seed
    from nhr.stats import StageStats

    identity = {
        "benchmark": benchmark.NAME,
        "data": str(data),
        "language": language,
        "editor_model": editor_config.models.editor.model_dump(mode="json"),
        "judge_model": judge_config.models.validator.model_dump(mode="json"),
    }
    check_output(store, identity)
    store.storage.clean_partial()
    editor = BackendPool(_cached_config(editor_config), store).get("editor")
    judge = BackendPool(_cached_config(judge_config), store).get("validator")
    edit_stats, judge_stats = StageStats(), StageStats()
    units = [(item, seed) for seed in range(seeds) for item in items]
    rows: list[dict[str, Any]] = []
    for start in range(0, len(units), CHUNK):
        chunk = units[start : start + CHUNK]
        requests = [
            EditRequest(
                image=item.image,
                instruction=item.instruction,
                seed=derive_seed("bench", benchmark.NAME, item.key, seed),
            )
            for item, seed in chunk
        ]
        edits = _call(
            editor.edit, requests, editor_config.edit.batch_size, editor_config, edit_stats
        )
        rows.extend(_judge(benchmark, judge, judge_config, judge_stats, chunk, edits))
        if progress is not None:
            progress(f"{min(start + CHUNK, len(units))}/{len(units)} edits judged")
    bench = summarize(
        benchmark,
        rows,
        seeds,
        model_label(editor_config.models.editor),
        model_label(judge_config.models.validator),
    )
    failures = Counter(f"{row['status']}:{row['reason']}" for row in rows if row.get("reason"))
    run = {
        **identity,
        "items": len(items),
        "seeds": seeds,
        "failures": dict(sorted(failures.items())),
        "calls": {
            "editor": {
                "items": edit_stats.model_calls,
                "seconds": round(edit_stats.model_seconds, 3),
            },
            "judge": {
                "items": judge_stats.model_calls,
                "seconds": round(judge_stats.model_seconds, 3),
            },
        },
    }
    store.write_bytes("scores.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    store.write_json("run.json", run)
    store.write_json("bench.json", bench)
    store.write_bytes("tables.md", render_tables(benchmark, bench, run).encode("utf-8"))
    return bench


def _call(method, requests, batch_size, config, stats, parse=None) -> list[Any]:
    from nhr.calls import call_model

    return call_model(
        method,
        requests,
        batch_size=batch_size,
        retry=config.retry,
        stats=stats,
        parse=parse,
        reask=_reask if parse is not None else None,
    )


def _reask(request: Any, attempt: int) -> Any:
    # a greedy request asked again gives the same answer: sample instead
    return dataclasses.replace(request, temperature=0.7, seed=attempt)


def _judge(benchmark, judge, judge_config, stats, chunk, edits) -> list[dict[str, Any]]:
    from nhr.calls import Failure

    rows: list[dict[str, Any]] = []
    asks: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for index, ((item, seed), edited) in enumerate(zip(chunk, edits)):
        row = {"key": item.key, "task": item.task, "seed": seed}
        rows.append(row)
        if isinstance(edited, Failure):
            row.update(status="edit_failed", reason=edited.reason, **benchmark.failed_scores())
            continue
        try:
            requests = benchmark.judge_requests(item, edited)
        except (OSError, ValueError) as error:  # an edit that is not a readable image
            row.update(status="edit_failed", reason="unreadable_image", **benchmark.failed_scores())
            log.warning("edit of %s seed %d is not an image: %s", item.key, seed, error)
            continue
        row["status"] = "ok"
        for kind, request in requests.items():
            asks[kind].append((index, request))
    answers: dict[int, dict[str, Any]] = defaultdict(dict)
    for kind, entries in asks.items():
        results = _call(
            judge.ask,
            [request for _, request in entries],
            judge_config.validate_.batch_size,
            judge_config,
            stats,
            parse=partial(benchmark.parse, kind),
        )
        for (index, _), result in zip(entries, results):
            answers[index][kind] = result
    for index, row in enumerate(rows):
        if row["status"] != "ok":
            continue
        failed = [a for a in answers[index].values() if isinstance(a, Failure)]
        if failed:
            row.update(status="judge_failed", reason=failed[0].reason)
            continue
        row["answers"] = answers[index]
        row.update(benchmark.item_scores(answers[index]))
    return rows


def summarize(
    benchmark: ModuleType, rows: list[dict[str, Any]], seeds: int, editor: str, judge: str
) -> dict[str, Any]:
    """bench.json: per metric, overall and per task, the mean over seeds of each seed's
    figure and the 95 % half-width over seeds. Judge failures are left out (not the
    editor's doing); failed edits count with the scale's bottom score."""
    from nhr.bench.stats import mean_ci

    per_seed = []
    for seed in range(seeds):
        scored = [r for r in rows if r["seed"] == seed and r["status"] != "judge_failed"]
        per_seed.append(benchmark.aggregate(scored))
    metrics = {}
    for metric in benchmark.METRICS:
        overall = mean_ci([s[metric]["overall"] for s in per_seed])  # drops NaN and None
        by_task = {}
        for task in benchmark.TASKS:
            values = [s[metric]["by_task"].get(task) for s in per_seed]
            if any(v is not None for v in values):
                by_task[task] = mean_ci([v for v in values if v is not None])
        metrics[metric] = {"overall": overall, "by_task": by_task}
    return {
        "benchmark": benchmark.NAME,
        "editor": editor,
        "judge": judge,
        "seeds": seeds,
        "metrics": metrics,
    }


def format_cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    if entry.get("ci") is None:
        return f"{entry['mean']:.2f}"
    return f"{entry['mean']:.2f} ± {entry['ci']:.2f}"


def render_tables(benchmark: ModuleType, bench: dict[str, Any], run: dict[str, Any]) -> str:
    body = benchmark.tables({**bench, "language": run.get("language", "en")}, format_cell)
    failures = run.get("failures") or {}
    notes = [
        f"Editor `{bench['editor']}`, judge `{bench['judge']}`: scores from different judges "
        "are not comparable.",
        f"Mean ± 95 % interval over {bench['seeds']} editor seed(s); "
        f"{run['items']} items per seed.",
    ]
    if failures:
        notes.append(
            "Failures (edit_failed score the scale's bottom; judge_failed are left out): "
            + ", ".join(f"{k} {v}" for k, v in failures.items())
        )
    return f"{body}\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def stderr_progress(message: str) -> None:
    """One updating line on a terminal; a line per update in a log file, where carriage
    returns would glue them together."""
    if sys.stderr.isatty():
        print(f"\r{message}", end="", file=sys.stderr, flush=True)
    else:
        print(message, file=sys.stderr, flush=True)
