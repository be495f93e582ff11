"""ImgEdit-Bench basic suite (PKU-YuanGroup ImgEdit): its JSON and images, per-category
1-5 criteria, its table.

Data: a folder holding the benchmark JSON (`basic_edit.json`, or `singleturn.json` in the
released archive; or pass the JSON file itself) and the image folders it names. Each entry
is `key -> {"id": "<folder>/<file>", "prompt": <instruction>, "edit_type": <category>}`.

Protocol (as in the benchmark's scripts): one judge request per edit with the category's
rubric, the instruction, the original and the edited image. The judge rates three criteria
on 1-5 (the first is how well the instruction was followed; the other two may not exceed
it), one line "Name: n" each; an item's score is the mean of its criteria, a category's the
mean of its items. The reference scripts print no overall figure; leaderboards report the
mean over all items, so `score` is that (micro) and `score_macro` the mean of the category
means; both are labelled in the tables.

Where nhr differs: the rubrics are nhr's own wording of the benchmark's criteria (the
criterion names are the benchmark's), an answer must give all three criteria on 1-5 or it
is re-asked and then recorded as a judge failure (the reference averages whatever numeric
lines it finds), and an edit the editor failed to make scores 1, the bottom of the scale.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from nhr.backends.base import VisionRequest
from nhr.bench.runner import BenchItem, as_png
from nhr.parsing import ParseError

NAME = "imgedit"
TITLE = "ImgEdit-Bench"
# categories in the order of the benchmark's results table; `compose` is shown as Hybrid
TASKS: tuple[str, ...] = (
    "add",
    "adjust",
    "extract",
    "replace",
    "remove",
    "background",
    "style",
    "compose",
    "action",
)
HEADINGS = {
    "add": "Add",
    "adjust": "Adjust",
    "extract": "Extract",
    "replace": "Replace",
    "remove": "Remove",
    "background": "Background",
    "style": "Style",
    "compose": "Hybrid",
    "action": "Action",
}
ALIASES = {"alter": "adjust", "hybrid": "compose"}  # spellings of older copies of the JSON
METRICS: tuple[str, ...] = ("score", "score_macro")
OVERALL = {"score": "micro", "score_macro": "macro"}
LANGUAGES = {"en": "en"}
FAILED_EDIT_SCORE = 1.0
JSON_NAMES = ("basic_edit.json", "singleturn.json")

# category -> three (criterion, what a 5 means, what a 1 means); the names are the benchmark's
CRITERIA: dict[str, tuple[tuple[str, str, str], ...]] = {
    "add": (
        (
            "Prompt Compliance",
            "the requested object is added, with the asked count, kind, colour and place",
            "nothing is added or something else is",
        ),
        (
            "Visual Naturalness",
            "the new object blends in: scale, lighting, shadows, perspective",
            "it looks pasted on",
        ),
        (
            "Physical & Detail Coherence",
            "contacts, occlusions and fine detail are right and the rest of the picture is intact",
            "floating, broken or smeared details",
        ),
    ),
    "adjust": (
        (
            "Prompt Compliance",
            "the named attribute (colour, material, texture, shape) of the "
            "named object changes as asked",
            "no change or the wrong object changes",
        ),
        (
            "Visual Seamlessness",
            "the changed region joins the rest with no seams or halos",
            "visible seams, halos or blotches",
        ),
        (
            "Physical & Detail Fidelity",
            "the object keeps its shape, structure and lighting response",
            "the object is deformed or flat",
        ),
    ),
    "extract": (
        (
            "Object Identity",
            "exactly the requested object is shown, whole and recognisable",
            "another object or a fragment",
        ),
        (
            "Mask Precision",
            "clean edges on a plain white background, nothing else kept",
            "ragged cut, background left over",
        ),
        ("Visual Quality", "sharp, undistorted, true colours", "blurred, distorted or discoloured"),
    ),
    "replace": (
        (
            "Prompt Compliance",
            "the named object is replaced by the requested one",
            "no replacement or a wrong one",
        ),
        ("Visual Naturalness", "the new object sits naturally in the scene", "it looks pasted on"),
        (
            "Physical & Detail Integrity",
            "size, perspective and surroundings stay right, no leftovers of the old object",
            "leftovers, broken surroundings",
        ),
    ),
    "remove": (
        (
            "Prompt Compliance",
            "the named object is gone completely, nothing else removed",
            "still there, or other things removed",
        ),
        (
            "Visual Naturalness",
            "the filled area looks like the real background",
            "a blur, smudge or hole",
        ),
        (
            "Physical & Detail Integrity",
            "no ghost outline or shadow remains and the rest is intact",
            "ghosts, shadows or damage",
        ),
    ),
    "background": (
        (
            "Instruction Compliance",
            "the background becomes what was asked while the foreground subject is kept",
            "unchanged background or lost subject",
        ),
        (
            "Visual Seamlessness",
            "the subject's edges meet the new background cleanly",
            "halos or cut-out edges",
        ),
        (
            "Physical Consistency",
            "lighting, perspective and scale of subject and background agree",
            "mismatched light or scale",
        ),
    ),
    "style": (
        ("Style Fidelity", "the picture clearly takes the requested style", "no or another style"),
        (
            "Content Preservation",
            "layout, subjects and their identity are kept",
            "the content is lost or changed",
        ),
        ("Rendering Quality", "the styled picture is clean and coherent", "noisy or broken"),
    ),
    "compose": (
        (
            "Instruction Compliance",
            "every part of the multi-step instruction is done",
            "none of it is done",
        ),
        ("Visual Naturalness", "all changes blend into the scene", "pasted-on changes"),
        (
            "Physical Consistency & Fine Detail",
            "lighting, geometry and detail stay coherent across all changes",
            "broken geometry or detail",
        ),
    ),
    "action": (
        (
            "Action Fidelity",
            "the subject performs the requested action or pose",
            "no or a wrong pose",
        ),
        (
            "Identity Preservation",
            "the subject stays the same individual, clothes and look",
            "another individual",
        ),
        (
            "Visual & Anatomical Coherence",
            "anatomy and motion are plausible, no extra or missing limbs",
            "broken anatomy",
        ),
    ),
}

_TEMPLATE = """You rate AI image edits for a training-data team. The first image is the
original, the second the edited result; the edit type is "$category".

Rate three criteria, each an integer from 1 (worst) to 5 (best):
$rubric
The second and third scores may not be higher than the first: an edit that does not do what
was asked cannot be rated well on anything else.

Answer in exactly this form, with nothing else:
Brief reasoning: <at most 20 words>
$lines

Editing instruction: $instruction"""


def prompt(category: str, instruction: str) -> str:
    criteria = CRITERIA[category]
    rubric = "\n".join(
        f"{n}. {name}: 5 = {best}; 1 = {worst}."
        for n, (name, best, worst) in enumerate(criteria, 1)
    )
    lines = "\n".join(f"{name}: <1-5>" for name, _, _ in criteria)
    return (
        _TEMPLATE.replace("$category", category)
        .replace("$rubric", rubric)
        .replace("$lines", lines)
        .replace("$instruction", instruction)
    )


def load(path: str | Path, language: str = "en") -> list[BenchItem]:
    if language not in LANGUAGES:
        raise ValueError("ImgEdit-Bench instructions are English only (--language en)")
    root = Path(path)
    if root.is_dir():
        found = [root / name for name in JSON_NAMES if (root / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no {' or '.join(JSON_NAMES)} in {path}")
        file = found[0]
    else:
        file = root
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not readable JSON: {error}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{file}: expected an object of entries keyed by id")
    items = []
    for key, entry in entries.items():
        category = ALIASES.get(entry["edit_type"], entry["edit_type"])
        if category not in TASKS:
            raise ValueError(f"{file}: unknown edit_type {entry['edit_type']!r} for key {key}")
        image = file.parent / entry["id"]
        if not image.is_file():
            raise FileNotFoundError(f"{file}: image {entry['id']} of key {key} is missing")
        items.append(
            BenchItem(
                key=str(key),
                task=category,
                instruction=entry["prompt"],
                image=as_png(image.read_bytes()),
            )
        )
    return items


def judge_requests(item: BenchItem, edited: bytes) -> dict[str, VisionRequest]:
    return {
        f"criteria:{item.task}": VisionRequest(
            images=(item.image, edited),
            prompt=prompt(item.task, item.instruction),
            max_tokens=512,
        )
    }


_LINE = re.compile(r"^\s*[*_]*([^:\n*_][^:\n]*?)[*_]*\s*:\s*[*_]*([0-9]+(?:\.[0-9]+)?)[*_]*\s*$")


def parse_answer(text: str, category: str) -> list[int]:
    """The three criteria's scores, matched by name (case-insensitive; markdown emphasis
    ignored)."""
    if not isinstance(text, str):
        raise ParseError("empty answer")
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            found[match.group(1).strip().lower()] = float(match.group(2))
    scores = []
    for name, _, _ in CRITERIA[category]:
        value = found.get(name.lower())
        if value is None or not 1 <= value <= 5:
            raise ParseError(f"no 1-5 score for {name!r} in {text[:120]!r}")
        scores.append(int(round(value)))
    return scores


def parse(kind: str, text: str) -> list[int]:
    """`kind` is "criteria:<category>" (the category decides which criteria to read)."""
    return parse_answer(text, kind.split(":", 1)[1])


def item_scores(answers: dict[str, list[int]]) -> dict[str, float]:
    (scores,) = answers.values()
    value = sum(scores) / len(scores)
    return {"score": value, "score_macro": value}


def failed_scores() -> dict[str, float]:
    return dict.fromkeys(METRICS, FAILED_EDIT_SCORE)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_task = {}
    for task in TASKS:
        values = [row["score"] for row in rows if row["task"] == task and "score" in row]
        if values:
            by_task[task] = sum(values) / len(values)
    scored = [row["score"] for row in rows if "score" in row]
    micro = sum(scored) / len(scored) if scored else math.nan
    macro = sum(by_task.values()) / len(by_task) if by_task else math.nan
    return {
        "score": {"overall": micro, "by_task": by_task},
        "score_macro": {"overall": macro, "by_task": dict(by_task)},
    }


def tables(bench: dict[str, Any], fmt) -> str:
    """The benchmark's results row: one column per category, then Overall (mean over all
    items) and, labelled, the mean of the category means."""
    score = bench["metrics"]["score"]
    macro = bench["metrics"]["score_macro"]
    heads = [HEADINGS[t] for t in TASKS] + ["Overall", "Overall (category mean)"]
    cells = [fmt(score["by_task"].get(t)) for t in TASKS]
    cells += [fmt(score["overall"]), fmt(macro["overall"])]
    return "\n".join(
        [
            f"### {TITLE} (basic)",
            "",
            "| Model | " + " | ".join(heads) + " |",
            "|---|" + "---:|" * len(heads),
            f"| {bench['editor']} | " + " | ".join(cells) + " |",
        ]
    )
