"""Stage 9, invert: every forward triplet gets an inverse <edited, inverse instruction, source>.

The LLM sees the ORIGINAL text-to-image prompt and the forward instruction, so the inverse can
restore specific detail ("Add a small blue mailbox beside the door" rather than "add it
again"). An answer that is empty, more than one instruction, or uses a banned word is re-asked
and finally recorded as a failure; the forward triplet then stays without an inverse.

Every augmentation stage (invert, backward, compose) reads the current set of triplets from
the stage before it and returns the whole updated set, so their order is a config choice and
the export reads the set from the last one.
"""

from __future__ import annotations

import re
from dataclasses import replace
from string import Template
from typing import Any

from nhr import taxonomy
from nhr.backends.base import ChatMessage, TextRequest
from nhr.calls import Failure, call_model
from nhr.ids import derive_seed, stable_id
from nhr.parsing import ParseError
from nhr.records import FAILED, OK
from nhr.stages.base import StageContext, template

# The words docs/method.md §2 forbids, with their inflections ("background" is not "back").
BANNED = re.compile(r"\b(revert\w*|undo\w*|undid|restor\w*|back)\b", re.IGNORECASE)
_PREFIX = re.compile(r"^\s*(?:inverse\s+)?instruction\s*:\s*", re.IGNORECASE)


def clean_inverse(text: str, max_words: int) -> str:
    """The inverse instruction in `text`, or ParseError with the reason it is unusable."""
    if not isinstance(text, str):
        raise ParseError("answer is not text", "empty_inverse")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ParseError("empty answer", "empty_inverse")
    if len(lines) > 1:
        raise ParseError(f"more than one line: {text[:80]!r}", "not_one_instruction")
    instruction = _PREFIX.sub("", lines[0]).strip().strip("\"'`").strip()
    if not instruction:
        raise ParseError("empty answer", "empty_inverse")
    if len(instruction.split()) > max_words:
        raise ParseError(f"{len(instruction.split())} words", "not_one_instruction")
    match = BANNED.search(instruction)
    if match:
        raise ParseError(f"uses the banned word {match.group(0)!r}", "banned_word")
    return instruction


def inverse_request(
    ctx: StageContext, prompt: str, instruction: str, triplet_id: str, attempt: int
) -> TextRequest:
    """The inversion request; attempt 0 is greedy, later attempts sample a new wording."""
    text = Template(template("invert")).substitute(prompt=prompt, instruction=instruction)
    return TextRequest(
        messages=(ChatMessage("user", text),),
        temperature=0.0 if attempt == 0 else 0.7,
        max_tokens=128,
        seed=derive_seed(ctx.config.run.seed, "invert", triplet_id, attempt),
    )


def ask_inverses(ctx: StageContext, requests: list[TextRequest]) -> list[Any]:
    """Inverse instructions (or Failures) for the requests, cleaned and checked."""
    max_words = ctx.config.invert.max_words
    return call_model(
        ctx.backend("inverter").chat,
        requests,
        batch_size=ctx.config.invert.batch_size,
        retry=ctx.config.retry,
        stats=ctx.stats,
        parse=lambda answer: clean_inverse(answer, max_words),
        reask=lambda request, n: replace(
            request, temperature=0.7, seed=derive_seed(request.seed, "reask", n)
        ),
        on_done=ctx.progress,
    )


class InvertStage:
    name = "invert"
    global_scope = False
    roles = ("inverter",)

    def __init__(self, previous: str) -> None:
        self.previous = previous
        self.reads = ("design", previous)

    def run(self, ctx: StageContext, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        prompts = {p["prompt_id"]: p["prompt"] for p in inputs["design"]}
        triplets = inputs[self.previous]
        forwards = [t for t in triplets if t["kind"] == "forward" and t["status"] == OK]
        ctx.stats.rows_in = len(forwards)
        requests = [
            inverse_request(ctx, prompts[f["prompt_id"]], f["instruction"], f["triplet_id"], 0)
            for f in forwards
        ]
        answers = ask_inverses(ctx, requests)
        inverses = []
        for forward, answer in zip(forwards, answers):
            operation = taxonomy.inverse_of(forward["operation"])
            row = {
                **forward,
                "triplet_id": stable_id("inverse", forward["triplet_id"]),
                "kind": "inverse",
                "source_image": forward["edited_image"],
                "edited_image": forward["source_image"],
                "instruction": None,
                "operation": operation,
                "category": taxonomy.get(operation).label,
                "adherence": None,
                "aesthetics": None,
                "score": None,
                "parents": [forward["triplet_id"]],
                "status": OK,
                "reason": None,
            }
            if isinstance(answer, Failure):
                row.update(status=FAILED, reason=answer.reason)
                ctx.stats.fail(answer.reason)
            else:
                row["instruction"] = answer
                ctx.stats.rows_out += 1
            inverses.append(row)
        return triplets + inverses
