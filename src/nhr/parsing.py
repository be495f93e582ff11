"""Turning model text into decisions: tolerant JSON, yes/no answers and scores.

Shared by every backend: a model's quirks (code fences, prose around JSON, "Yes." vs "yes")
are handled once here, and text that cannot be read raises `ParseError`, which the caller
retries and finally records as an `unparseable` failure.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any


class ParseError(ValueError):
    """The model answered, but not in a form we can use."""

    def __init__(self, message: str, reason: str = "unparseable") -> None:
        super().__init__(message)
        self.reason = reason


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


def _balanced_span(text: str, start: int) -> str | None:
    """The substring from an opening bracket at `start` to its matching close, if any."""
    opening = text[start]
    closing = "]" if opening == "[" else "}"
    depth = 0
    in_string = False
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return text[start : index + 1] if char == closing else None
    return None


def _loads_lenient(candidate: str) -> Any:
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        repaired = _TRAILING_COMMA.sub(r"\1", candidate.translate(_SMART_QUOTES))
        return json.loads(repaired)


def extract_json(text: str, expect: type | None = None) -> Any:
    """The first JSON value in `text` (inside code fences or surrounded by prose).

    `expect` (list or dict) restricts which bracket may start the value.
    """
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty answer")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    openers = {list: "[", dict: "{", None: "[{"}[expect]
    for candidate in candidates:
        stripped = candidate.strip()
        try:
            value = _loads_lenient(stripped)
            if expect is None or isinstance(value, expect):
                return value
        except json.JSONDecodeError:
            pass
        for index, char in enumerate(stripped):
            if char not in openers:
                continue
            span = _balanced_span(stripped, index)
            if span is None:
                continue
            try:
                value = _loads_lenient(span)
            except json.JSONDecodeError:
                continue
            if expect is None or isinstance(value, expect):
                return value
    raise ParseError(f"no JSON {expect.__name__ if expect else 'value'} in answer: {text[:80]!r}")


_YES = {"yes", "y", "true", "yeah", "correct"}
_NO = {"no", "n", "false", "nope", "incorrect"}
_WORD = re.compile(r"[a-z]+")


def parse_yes_no(text: str) -> bool:
    """Yes/No from a short answer ("Yes", "no.", "**Yes**", "Answer: No")."""
    if not isinstance(text, str):
        raise ParseError("answer is not text")
    words = _WORD.findall(text.lower())
    if not words:
        raise ParseError(f"no yes/no in answer: {text[:80]!r}")
    if words[0] in _YES:
        return True
    if words[0] in _NO:
        return False
    # "The answer is yes." -- accept only when exactly one of the two appears.
    has_yes = any(w in ("yes",) for w in words)
    has_no = any(w in ("no",) for w in words)
    if has_yes != has_no and len(words) <= 12:
        return has_yes
    raise ParseError(f"no clear yes/no in answer: {text[:80]!r}")


_SCORE_KEYS = {
    "adherence": ("InstructionAdherence", "instruction_adherence", "adherence"),
    "aesthetics": ("ImageAesthetic", "image_aesthetic", "aesthetics", "aesthetic"),
}


def _clamp_score(value: Any, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParseError(f"{name} is not a number: {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ParseError(f"{name} is not finite: {value!r}")
    return min(high, max(low, number))


def parse_scores(text: str, low: float = 1.0, high: float = 5.0) -> tuple[float, float]:
    """(adherence, aesthetics) from the validator's JSON, clamped to [low, high].

    Falls back to `Key: value` pairs when the JSON is broken but both numbers are present.
    """
    found: dict[str, Any] = {}
    try:
        data = extract_json(text, expect=dict)
        lowered = {str(k).lower(): v for k, v in data.items()}
        for field, keys in _SCORE_KEYS.items():
            for key in keys:
                if key.lower() in lowered:
                    found[field] = lowered[key.lower()]
                    break
    except ParseError:
        pass
    if len(found) < 2 and isinstance(text, str):
        for field, keys in _SCORE_KEYS.items():
            if field in found:
                continue
            names = "|".join(keys[:2])
            pattern = rf'"?(?:{names})"?\s*[:=]\s*"?(-?\d+(?:\.\d+)?)'
            match = re.search(pattern, text)
            if match:
                found[field] = match.group(1)
    if len(found) < 2:
        raise ParseError(f"missing scores in answer: {str(text)[:80]!r}")
    return (
        _clamp_score(found["adherence"], "InstructionAdherence", low, high),
        _clamp_score(found["aesthetics"], "ImageAesthetic", low, high),
    )
