"""Which prompt template a request was filled from, recognised as a model would read it.

The simulator answers each template of nhr/prompts differently, so recognising them is a
contract with those files (tests/test_prompt_contract.py renders every template through the
stages and checks that it is recognised). To survive a rewording of a template's prose, the
markers are what a template cannot lose without breaking its stage as well: a labelled field
the stage fills in and the simulator must read to answer (the operation, the batch size, the
prompt, the instruction), or the answer format the stage's parser expects (the score keys,
a yes/no answer).
"""

from __future__ import annotations

import re

TEXT_TASKS = ("design", "invert")
VISION_TASKS = ("score", "unwanted", "gate", "aesthetic")

_BATCH_SIZE = re.compile(r"exactly\s+\d+\s+items")
_YES_OR_NO = re.compile(r"\byes\s*(?:or|/)\s*no\b", re.IGNORECASE)


def has_field(text: str, label: str) -> bool:
    """True if a line starts with `label`, optionally more words, then a colon."""
    return re.search(rf"^\s*{re.escape(label)}\b[^:\n]*:", text, re.MULTILINE) is not None


def text_task(text: str) -> str:
    """design (design.txt), invert (invert.txt) or unknown, for a chat request's text."""
    if has_field(text, "Original description") and has_field(text, "Forward instruction"):
        return "invert"
    if has_field(text, "Operation") and _BATCH_SIZE.search(text):
        return "design"
    return "unknown"


def vision_task(text: str) -> str:
    """score (score.txt), gate (gate.txt), unwanted (unwanted.txt), aesthetic (aesthetic.txt)
    or unknown, for a vision request's text (system prompt and prompt)."""
    if "InstructionAdherence" in text and has_field(text, "Instruction"):
        return "score"
    if has_field(text, "Text-to-image prompt"):
        return "gate"
    if _YES_OR_NO.search(text):
        # a yes/no question about an edit names its instruction; one about a single image
        # (aesthetic.txt) has no field at all
        return "unwanted" if has_field(text, "Instruction") else "aesthetic"
    return "unknown"
