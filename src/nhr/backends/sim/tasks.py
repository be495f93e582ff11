"""Which prompt template a request was filled from, recognised as a model would read it.

The simulator answers each template of nhr/prompts differently, so recognising them is a
contract with those files (tests/test_prompt_contract.py renders every template through the
stages and checks that it is recognised). To survive a rewording of a template's prose, the
markers are what a template cannot lose without breaking its stage as well: a labelled field
the stage fills in and the simulator must read to answer (the operation, the batch size, the
prompt, the instruction), or the answer format the stage's parser expects (the score keys,
a yes/no answer).

The two editing benchmarks of `nhr bench` (nhr/bench/gedit.py, nhr/bench/imgedit.py) are
recognised the same way: GEdit-Bench asks for a `"score": [a, b]` list (semantic consistency
with an `Editing instruction` field and two images, perceptual quality with neither), ImgEdit
for one `Name: <1-5>` line per criterion and names its `Editing instruction`.
"""

from __future__ import annotations

import re

TEXT_TASKS = ("design", "invert", "design_image")
VISION_TASKS = (
    "score",
    "unwanted",
    "gate",
    "aesthetic",
    "pairwise",
    "gedit_sc",
    "gedit_pq",
    "imgedit",
    "describe",
)
BENCH_TASKS = ("gedit_sc", "gedit_pq", "imgedit")

_BATCH_SIZE = re.compile(r"exactly\s+\d+\s+items")
_YES_OR_NO = re.compile(r"\byes\s*(?:or|/)\s*no\b", re.IGNORECASE)
_SCORE_LIST = re.compile(r'"score"\s*:\s*\[')
_CRITERION_LINE = re.compile(r"^\s*([^:\n<>]+?)\s*:\s*<\s*1\s*-\s*5\s*>\s*$", re.MULTILINE)
EDIT_INSTRUCTION = re.compile(r"^\s*Editing instruction\s*:\s*(.+?)\s*$", re.MULTILINE)


def has_field(text: str, label: str) -> bool:
    """True if a line starts with `label`, optionally more words, then a colon."""
    return re.search(rf"^\s*{re.escape(label)}\b[^:\n]*:", text, re.MULTILINE) is not None


def text_task(text: str) -> str:
    """design (design.txt), invert (invert.txt), design_image (design_image.txt) or unknown,
    for a chat request's text."""
    if has_field(text, "Original description") and has_field(text, "Forward instruction"):
        return "invert"
    if has_field(text, "Image description") and has_field(text, "Operations to use"):
        return "design_image"  # design_image.txt: edits for a described photo
    if has_field(text, "Operation") and _BATCH_SIZE.search(text):
        return "design"
    return "unknown"


def criteria(text: str) -> list[str]:
    """The criterion names of an ImgEdit-style answer form (`Name: <1-5>` lines), in order."""
    return [match.group(1) for match in _CRITERION_LINE.finditer(text)]


def vision_task(text: str) -> str:
    """score (score.txt), gate (gate.txt), unwanted (unwanted.txt), aesthetic (aesthetic.txt),
    pairwise (pairwise.txt: two edits compared, answered {"BetterEdit": "A" | "B"}), gedit_sc / gedit_pq (GEdit-Bench semantic consistency / perceptual quality), imgedit
    (ImgEdit-Bench criteria) or unknown, for a vision request's text (system prompt and
    prompt)."""
    if "InstructionAdherence" in text and has_field(text, "Instruction"):
        return "score"
    if has_field(text, "Description words at most"):
        return "describe"  # describe.txt: a photo described for the designer
    if '"BetterEdit"' in text and has_field(text, "Instruction"):
        return "pairwise"
    if _SCORE_LIST.search(text):
        return "gedit_sc" if has_field(text, "Editing instruction") else "gedit_pq"
    if criteria(text) and has_field(text, "Editing instruction"):
        return "imgedit"
    if has_field(text, "Text-to-image prompt"):
        return "gate"
    if _YES_OR_NO.search(text):
        # a yes/no question about an edit names its instruction; one about a single image
        # (aesthetic.txt) has no field at all
        return "unwanted" if has_field(text, "Instruction") else "aesthetic"
    return "unknown"
