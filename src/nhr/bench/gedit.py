"""GEdit-Bench (Step1X-Edit): a local copy of its parquet, VIEScore-style judging, its tables.

Data: the dataset's parquet files (a file, or a folder searched recursively, as a Hugging
Face snapshot stores them), columns `key, task_type, instruction, instruction_language,
input_image` (and `Intersection_exist`); `input_image_raw` is never read. The editor gets
`input_image`, the image the benchmark's judge compares against.

Protocol (as in the benchmark's evaluation scripts): two judge requests per edited image.
Semantic consistency (SC) sees the source, then the edit, and the instruction and answers
two 0-10 scores, editing success and over-editing; perceptual quality (PQ) sees the edit
alone and answers naturalness and artefacts. An item's SC and PQ are the minimum of their two
scores, its overall O = sqrt(SC * PQ); a task's figure is the mean over its items and the
overall figure the unweighted mean of the 11 task means. The edit is resized to the source's
size before judging, as the benchmark does.

Where nhr differs: the prompts below are nhr's own wording of the protocol, not the
benchmark's text; an answer that cannot be parsed is re-asked and then recorded as a judge
failure (the reference code substitutes a random score); an edit the editor failed to make
scores 0 on every metric instead of silently leaving the denominator (see docs/bench.md).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from nhr.backends.base import VisionRequest
from nhr.bench.runner import BenchItem, as_png
from nhr.parsing import ParseError, extract_json

NAME = "gedit"
TITLE = "GEdit-Bench"
TASKS: tuple[str, ...] = (
    "background_change",
    "color_alter",
    "material_alter",
    "motion_change",
    "ps_human",
    "style_change",
    "subject-add",
    "subject-remove",
    "subject-replace",
    "text_change",
    "tone_transfer",
)
METRICS: tuple[str, ...] = ("G_SC", "G_PQ", "G_O")
OVERALL = dict.fromkeys(METRICS, "macro")  # overall = mean of the task means
LANGUAGES = {"en": "en", "cn": "cn", "zh": "cn"}  # the data spells Chinese "cn"
FAILED_EDIT_SCORE = 0.0  # the bottom of the 0-10 scale

_PREAMBLE = """You are an experienced digital artist who reviews AI-generated images against a set of rules.
Every image and every person shown is AI-generated, so there is no privacy concern.
Answer with a JSON object only: {"score": [...], "reasoning": "..."}, where "score" is a list
of integers and "reasoning" one short sentence."""

_SC_RULES = """You see two images: the first is an original picture, the second is an
AI-edited version of it. Judge how well the edit instruction was carried out in the second
image; when the edit failed, the two images may look the same.
Give two integers from 0 to 10:
- first, editing success: 0 when the edited scene does not follow the instruction at all,
  10 when it follows it perfectly;
- second, over-editing: 0 when the edited scene has become a completely different picture,
  10 when it is clearly the original changed as little as the instruction needs.
"score" must be [editing success, over-editing].
Editing instruction: $instruction"""

_PQ_RULES = """You see one AI-generated image. Give two integers from 0 to 10:
- first, naturalness: 0 when the scene looks unnatural (wrong distances, shadows or
  lighting), 10 when it looks entirely natural;
- second, artefacts: 0 for heavy distortions, watermarks, scratches, blurred faces, malformed
  body parts or subjects that do not blend in, 10 for none at all.
"score" must be [naturalness, artefacts]."""


def sc_prompt(instruction: str) -> str:
    return f"{_PREAMBLE}\n{_SC_RULES}".replace("$instruction", instruction)


def pq_prompt() -> str:
    return f"{_PREAMBLE}\n{_PQ_RULES}"


def load(path: str | Path, language: str = "en") -> list[BenchItem]:
    """The items of one instruction language, in file order."""
    import pyarrow.parquet as pq

    wanted = LANGUAGES.get(language)
    if wanted is None:
        raise ValueError(f"GEdit-Bench languages are en and cn, not {language!r}")
    root = Path(path)
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"no GEdit-Bench parquet file at {path}")
    columns = ["key", "task_type", "instruction", "instruction_language", "input_image"]
    items = []
    for file in files:
        schema = pq.read_schema(file)
        extra = ["Intersection_exist"] if "Intersection_exist" in schema.names else []
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(f"{file} is not GEdit-Bench: no column(s) {', '.join(missing)}")
        for row in pq.read_table(file, columns=columns + extra).to_pylist():
            if row["instruction_language"] != wanted:
                continue
            if row["task_type"] not in TASKS:
                raise ValueError(f"{file}: unknown task_type {row['task_type']!r}")
            items.append(
                BenchItem(
                    key=str(row["key"]),
                    task=row["task_type"],
                    instruction=row["instruction"],
                    image=as_png(_image_bytes(row["input_image"])),
                    extra={"intersection": bool(row.get("Intersection_exist", False))},
                )
            )
    return items


def _image_bytes(value: Any) -> bytes:
    # a datasets Image column is stored as a struct {bytes, path}
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, bytes | bytearray):
        raise ValueError("input_image holds no image bytes")
    return bytes(value)


def judge_requests(item: BenchItem, edited: bytes) -> dict[str, VisionRequest]:
    shown = resize_like(edited, item.image)
    return {
        "sc": VisionRequest(images=(item.image, shown), prompt=sc_prompt(item.instruction)),
        "pq": VisionRequest(images=(shown,), prompt=pq_prompt()),
    }


def resize_like(edited: bytes, source: bytes) -> bytes:
    """The edit at the source's size (untouched when the sizes already agree)."""
    from PIL import Image

    with Image.open(io.BytesIO(source)) as src, Image.open(io.BytesIO(edited)) as out:
        if src.size == out.size:
            return edited
        buffer = io.BytesIO()
        out.convert("RGB").resize(src.size).save(buffer, format="PNG")
        return buffer.getvalue()


def parse_answer(text: str) -> list[int]:
    """The two 0-10 integers of a {"score": [a, b]} answer (a bare [a, b] list too)."""
    try:
        value = extract_json(text)
    except ParseError:
        value = None
    if isinstance(value, dict):
        value = value.get("score")
    if not isinstance(value, list) or len(value) != 2:
        raise ParseError(f"expected a score list of two integers, got {text[:120]!r}")
    scores = []
    for entry in value:
        if isinstance(entry, bool) or not isinstance(entry, int | float) or not 0 <= entry <= 10:
            raise ParseError(f"score {entry!r} is not on the 0-10 scale")
        scores.append(int(round(entry)))
    return scores


def parse(kind: str, text: str) -> list[int]:
    return parse_answer(text)


def item_scores(answers: dict[str, list[int]]) -> dict[str, float]:
    sc, pq = float(min(answers["sc"])), float(min(answers["pq"]))
    return {"G_SC": sc, "G_PQ": pq, "G_O": math.sqrt(sc * pq)}


def failed_scores() -> dict[str, float]:
    return dict.fromkeys(METRICS, FAILED_EDIT_SCORE)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One seed's figures: per task the mean over its items, overall the mean of the task
    means (tasks without a scored item are left out of the overall)."""
    result = {}
    for metric in METRICS:
        by_task = {}
        for task in TASKS:
            values = [row[metric] for row in rows if row["task"] == task and metric in row]
            if values:
                by_task[task] = sum(values) / len(values)
        overall = sum(by_task.values()) / len(by_task) if by_task else math.nan
        result[metric] = {"overall": overall, "by_task": by_task}
    return result


def tables(bench: dict[str, Any], fmt) -> str:
    """Markdown in the benchmark's layout: the headline row (G_SC, G_PQ, G_O) as in its
    results table, then the same three figures per task type."""
    metrics = bench["metrics"]
    language = bench.get("language", "en").upper()
    lines = [
        f"### {TITLE}-{language} (full set)",
        "",
        "| Model | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
        f"| {bench['editor']} | " + " | ".join(fmt(metrics[m]["overall"]) for m in METRICS) + " |",
        "",
        "| Task | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for task in TASKS:
        cells = [fmt(metrics[m]["by_task"].get(task)) for m in METRICS]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines.append(
        "| **Overall** | " + " | ".join(fmt(metrics[m]["overall"]) for m in METRICS) + " |"
    )
    return "\n".join(lines)
