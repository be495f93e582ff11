"""`nhr export-tuning`: rated triplets as supervised tuning data for a validator.

Each example is what the validate stage sends (both images, then the judge's prompt with the
instruction filled in) and, as the answer, the item's rater-bias-corrected ground truth
(nhr/labels.py) in the JSON that judge's parser reads, on its scale. The judge is the one a
config gives (`validate.judge` of `--judge CONFIG`), else the one of the run the labels rate,
else the paper's (nhr/prompts/score.txt, 1-5); `--prompt` replaces only its prompt. The items
are split into train and validation, stratified by category and true-score bucket, with every
source image on one side only (a judge must not be validated on sources it was tuned on).

Formats, each as its tuning service documents it:
- vertex-gemini: Vertex AI supervised tuning JSONL, one `{"contents": [...]}` per line, user
  parts `fileData` (the images, copied to DIR/images/, by Cloud Storage URI) and `text`, the
  model part the target. The service reads images from Cloud Storage only, hence the URIs.
- openai: OpenAI vision fine-tuning chat JSONL, images inline as base64 `data:` URLs in
  `image_url` parts of the user message, the assistant message the target.
- trl: a Hugging Face dataset (Parquet, one file per split) with `messages` (content parts
  `{"type": "image"}` and `{"type": "text"}`) and `images`, as TRL's SFTTrainer expects
  for vision-language models.

DIR also gets split.json (which item went where) and labels-validation.parquet (the held-out
ratings, ready for `nhr calibrate`).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from string import Template
from typing import Any

FORMATS = ("vertex-gemini", "openai", "trl")
SPLITS = ("train", "validation")
TRUTH_BUCKETS = (2.0, 3.0, 4.0, 4.5)
PLACEHOLDER_CHECK = "<nhr: the instruction goes here>"  # finds a prompt without $instruction


class TuningExportError(ValueError):
    pass


def target_json(instruction: float, aesthetics: float, judge: Any = None) -> str:
    """The answer the judge's prompt asks for, from the ground truth (1-5), mapped linearly
    onto the judge's scale (`validate.judge`; None: the paper's 1-5 scores). A VIEScore-style
    answer gives each scale's score to both of its sub-scores, so that the parser's minimum of
    each pair reads it back."""
    parser, low, high = ("scores", 1.0, 5.0) if judge is None else judge_scale(judge)
    adherence, aesthetic = (
        round(low + (value - 1.0) * (high - low) / 4.0, 2) for value in (instruction, aesthetics)
    )
    if parser == "viescore":
        return json.dumps({"score": [adherence, adherence, aesthetic, aesthetic]})
    return json.dumps({"InstructionAdherence": adherence, "ImageAesthetic": aesthetic})


def judge_scale(judge: Any) -> tuple[str, float, float]:
    """(parser, low, high) of a judge; an unbounded scale has no target a 1-5 label maps to."""
    if judge.low is None or judge.high is None:
        raise TuningExportError(
            "the judge's scale is unbounded (validate.judge low/high null): ratings on 1-5 "
            "cannot be written as its answers; tune a judge with a bounded scale"
        )
    return judge.parser, float(judge.low), float(judge.high)


def score_prompt(instruction: str, judge: Any = None) -> str:
    """The judge's prompt for one instruction, built as the validate stage builds it (None:
    the paper's score prompt)."""
    from nhr.stages.validate import judge_prompt

    prompt = "score" if judge is None else judge.prompt
    return Template(judge_prompt(prompt)).substitute(instruction=instruction)


def resolve_judge(
    location: str | Path,
    run: str | Path | None = None,
    judge_config: str | Path | None = None,
    prompt: str | None = None,
) -> Any:
    """The judge the examples are written for (a config.JudgeOutput): `judge_config`'s
    validate.judge, else that of the run the labels rate, else the paper's; `prompt` (a
    template name of nhr, a file holding the prompt, or the prompt text with $instruction)
    replaces its prompt. Checked here, so a bad prompt fails before any file is written."""
    from nhr.config import JudgeOutput, parse_config
    from nhr.labels import run_of_labels

    if judge_config is not None:
        from nhr.calibrate import load_judge_config

        judge = load_judge_config(judge_config).validate_.judge
    else:
        store = run_of_labels(location, run)
        judge = parse_config(store.read_config()).validate_.judge if store else JudgeOutput()
    if prompt is not None:
        path = Path(prompt)
        if "$instruction" not in prompt and path.suffix and path.is_file():
            prompt = path.read_text(encoding="utf-8")
        judge = judge.model_copy(update={"prompt": prompt})
    try:
        text = score_prompt(PLACEHOLDER_CHECK, judge)
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise TuningExportError(
            f"prompt {judge.prompt[:60]!r} is neither a prompt template of nhr "
            f"(nhr/prompts/*.txt, by name) nor a prompt text with $instruction ({error})"
        ) from None
    if PLACEHOLDER_CHECK not in text:
        raise TuningExportError(f"prompt {judge.prompt[:60]!r} has no $instruction placeholder")
    judge_scale(judge)
    return judge


# --- examples --------------------------------------------------------------------------------


def examples(
    location: str | Path, run: str | Path | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One example per rated item: {item, instruction, category, source, edited (bytes),
    source_key (digest of the source bytes), truth (instruction, aesthetics)}; and the
    label rows."""
    from nhr.labels import (
        ground_truth,
        items_of,
        outside_image_reader,
        read_labels,
        run_of_labels,
    )

    rows = read_labels(location)
    truth = ground_truth(rows)
    firsts = items_of(rows)
    store = run_of_labels(location, run)
    known: dict[str, dict[str, Any]] = {}
    if store is not None:
        from nhr.label_sample import candidates

        known = {c["item"]: c for c in candidates(store)}
    from nhr.sources import decode_checked

    read_outside = outside_image_reader(location)
    found = []
    for item, row in firsts.items():
        if row["source_image"] and row["edited_image"]:
            try:
                source = read_outside(row["source_image"])
                edited = read_outside(row["edited_image"])
            except (FileNotFoundError, OSError) as error:
                raise TuningExportError(f"item {item}: cannot read its image ({error})") from None
            for kind, data in (("source_image", source), ("edited_image", edited)):
                problem = decode_checked(data)  # before anything is written
                if isinstance(problem, str):
                    raise TuningExportError(
                        f"item {item}: its {kind} {row[kind]} is not a usable image ({problem})"
                    )
            instruction, category = row["instruction"], row["category"]
        elif item in known:
            candidate = known[item]
            source = store.images.get(candidate["source_image"])
            edited = store.images.get(candidate["edited_image"])
            instruction, category = candidate["instruction"], candidate["category"]
        else:
            where = "the run " + str(store.where()) if store else "no run (pass --run RUN)"
            raise TuningExportError(
                f"item {item}: not a candidate of {where}, and its row names no "
                "source_image and edited_image"
            )
        found.append(
            {
                "item": item,
                "instruction": instruction,
                "category": category or "uncategorised",
                "source": source,
                "edited": edited,
                "source_key": hashlib.sha256(source).hexdigest(),
                "truth": truth[item],
            }
        )
    return found, rows


def _truth_bucket(truth: tuple[float, float]) -> int:
    low = min(truth)
    return sum(low >= edge for edge in TRUTH_BUCKETS)


def split(
    found: list[dict[str, Any]], validation_share: float = 0.2, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Train and validation examples, stratified by category and true-score bucket, with all
    items of one source image on the same side.

    Items are grouped by source image; a group belongs to the stratum of its first item. Within
    each stratum the groups come in a seeded order and go to validation until the stratum's
    validation count reaches its share."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for example in sorted(found, key=lambda e: e["item"]):
        groups.setdefault(example["source_key"], []).append(example)
    strata: dict[tuple[str, int], list[list[dict[str, Any]]]] = {}
    for key in sorted(groups):
        first = groups[key][0]
        strata.setdefault((first["category"], _truth_bucket(first["truth"])), []).append(
            groups[key]
        )
    generator = random.Random(seed)
    ordered = []
    for stratum in sorted(strata):
        members = strata[stratum]
        generator.shuffle(members)
        ordered.extend(members)
    # Systematic sampling over the stratum-sorted groups: a group is held out whenever that
    # brings the held-out count closer to the share of the items seen so far, so every stratum
    # gets its share (to within one group) and the total matches it, even where strata are
    # too small for a quota of their own.
    chosen: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    seen = held = 0
    for group in ordered:
        seen += len(group)
        if held + len(group) / 2 < validation_share * seen:  # holding it gets closer
            held += len(group)
            chosen["validation"].extend(group)
        else:
            chosen["train"].extend(group)
    for side in chosen.values():  # files list examples in item order, as split.json does
        side.sort(key=lambda example: example["item"])
    return chosen


# --- formats ---------------------------------------------------------------------------------


def _supported_image(data: bytes) -> tuple[bytes, str]:
    """The image as PNG, JPEG or WebP (what every format accepts) and its MIME type."""
    from nhr.backends.api import image_mime

    mime = image_mime(data)
    if mime != "image/png" or data.startswith(b"\x89PNG"):
        return data, mime
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, "PNG")
    return buffer.getvalue(), "image/png"


def vertex_line(
    example: dict[str, Any], uris: tuple[str, str], judge: Any = None
) -> dict[str, Any]:
    parts = [{"fileData": {"mimeType": mime, "fileUri": uri}} for uri, mime in uris]
    parts.append({"text": score_prompt(example["instruction"], judge)})
    return {
        "contents": [
            {"role": "user", "parts": parts},
            {"role": "model", "parts": [{"text": target_json(*example["truth"], judge)}]},
        ]
    }


def openai_line(example: dict[str, Any], judge: Any = None) -> dict[str, Any]:
    import base64

    content: list[dict[str, Any]] = []
    for image in (example["source"], example["edited"]):
        data, mime = _supported_image(image)
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": score_prompt(example["instruction"], judge)})
    return {
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": target_json(*example["truth"], judge)},
        ]
    }


def trl_row(example: dict[str, Any], judge: Any = None) -> dict[str, Any]:
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "text": None},
                    {"type": "image", "text": None},
                    {"type": "text", "text": score_prompt(example["instruction"], judge)},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": target_json(*example["truth"], judge)}],
            },
        ],
        "images": [
            {"bytes": _supported_image(example["source"])[0], "path": None},
            {"bytes": _supported_image(example["edited"])[0], "path": None},
        ],
    }


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")


def _trl_parquet(rows: list[dict[str, Any]]) -> bytes:
    try:
        import datasets
        from datasets import Dataset, Features, Image, List, Value
    except ImportError as error:
        raise TuningExportError(
            f"--format trl writes a Hugging Face dataset: pip install datasets ({error})"
        ) from None
    features = Features(
        {
            "messages": List(
                {
                    "role": Value("string"),
                    "content": List({"type": Value("string"), "text": Value("string")}),
                }
            ),
            "images": List(Image()),
        }
    )
    buffer = io.BytesIO()
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a library's progress bar has no place in a CLI's output
    try:
        Dataset.from_list(rows, features=features).to_parquet(buffer)
    finally:
        if bars:
            datasets.enable_progress_bars()
    return buffer.getvalue()


def export_tuning(
    location: str | Path,
    output: str | Path,
    format: str,
    run: str | Path | None = None,
    validation_share: float = 0.2,
    seed: int = 0,
    image_uri_prefix: str | None = None,
    judge_config: str | Path | None = None,
    prompt: str | None = None,
) -> dict[str, Any]:
    """Write the tuning files of one format to `output` (a folder path or URL); returns
    a summary {format, train, validation, files}. The examples are written for the judge of
    `judge_config` / the labels' run / the paper, `prompt` replacing its prompt
    (resolve_judge)."""
    from nhr.labels import parquet_bytes
    from nhr.storage import open_storage

    if format not in FORMATS:
        raise TuningExportError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "vertex-gemini":
        prefix = image_uri_prefix or (str(output) if str(output).startswith("gs://") else None)
        if prefix is None:
            raise TuningExportError(
                "--format vertex-gemini references images by Cloud Storage URI: pass "
                "--image-uri-prefix gs://BUCKET/PATH (where you will upload DIR), or an "
                "--output on gs://"
            )
        prefix = prefix.rstrip("/") + "/"
    judge = resolve_judge(location, run, judge_config, prompt)
    found, rows = examples(location, run)
    if not found:
        raise TuningExportError(f"{location}: no rated item")
    sides = split(found, validation_share, seed)
    storage = open_storage(output)
    files = []
    for side in SPLITS:
        chosen = sides[side]
        if format == "vertex-gemini":
            lines = []
            for example in chosen:
                uris = []
                for image in (example["source"], example["edited"]):
                    data, mime = _supported_image(image)
                    digest = hashlib.sha256(data).hexdigest()
                    name = f"images/{digest}.{mime.split('/')[1]}"
                    if not storage.exists(name):
                        storage.write_bytes(name, data)
                    uris.append((prefix + name, mime))
                lines.append(vertex_line(example, tuple(uris), judge))
            name, data = f"{side}.jsonl", _jsonl(lines)
        elif format == "openai":
            name, data = f"{side}.jsonl", _jsonl([openai_line(e, judge) for e in chosen])
        else:
            name, data = f"{side}.parquet", _trl_parquet([trl_row(e, judge) for e in chosen])
        storage.write_bytes(name, data)
        files.append(name)
    held = {e["item"] for e in sides["validation"]}
    storage.write_bytes(
        "labels-validation.parquet", parquet_bytes([r for r in rows if r["item"] in held])
    )
    summary = {
        "format": format,
        "seed": seed,
        "validation_share": validation_share,
        "train": sorted(e["item"] for e in sides["train"]),
        "validation": sorted(held),
        # the judge the examples were written for: its prompt, parser and scale
        "judge": judge.model_dump(exclude={"max_tokens"}),
    }
    storage.write_bytes("split.json", json.dumps(summary, indent=2).encode("utf-8"))
    files += ["labels-validation.parquet", "split.json"]
    return {
        "format": format,
        "train": len(sides["train"]),
        "validation": len(sides["validation"]),
        "files": [str(storage.where(name)) for name in files],
    }
