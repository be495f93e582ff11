"""Label Studio interop: the rating sample as Label Studio tasks, and Label Studio's JSON export
back into the labels table (nhr/labels.py).

Export writes, into one folder: `tasks.json` (Label Studio's JSON import format: a list of
tasks `{"data": {...}}`), `labeling-config.xml` (two 1-5 Rating controls and a comment box,
with the source and edited image side by side and the instruction), and `images/` (the
images, named by digest). A task's image fields default to Label Studio's local-files URL
`/data/local-files/?d=images/<digest>.png`, so serving the folder with local file storage
(LOCAL_FILES_SERVING_ENABLED, LOCAL_FILES_DOCUMENT_ROOT = the folder) just works; when
`images/` is uploaded elsewhere, IMAGE_URL_PREFIX is the URL of that uploaded folder and a
field is `IMAGE_URL_PREFIX/<digest>.png`.

Import reads Label Studio's JSON export (a list of tasks with `annotations`, each holding a
`result` list of `{"from_name", "type", "value"}` regions and `completed_by`): one labels row
per submitted, non-cancelled annotation with both ratings. The rater id is the annotator's
e-mail when the export names it, else `label-studio-user-<id>`. Every import merges into one
file, RUN/labels/label-studio.parquet, by (item, rater): the imported rating replaces an
earlier one of the same item by the same rater, so re-importing an export (or a later export
of the same project) adds no duplicates, and exports of several projects add up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from nhr.labels import LABELS_FOLDER, LabelsError, read_labels, validate_row, write_labels

INSTRUCTION_CONTROL = "instruction_score"
AESTHETICS_CONTROL = "aesthetics_score"
COMMENT_CONTROL = "comment"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
IMPORT_KEY = f"{LABELS_FOLDER}/label-studio.parquet"


def labeling_config() -> str:
    """The Label Studio labeling config (XML) that tasks.json is made for."""
    return f"""<View>
  <Header value="Rate the edit: the first image is the original, the second the edited one"/>
  <Text name="instruction" value="$instruction"/>
  <View style="display: flex; gap: 1em">
    <Image name="source" value="$source_image"/>
    <Image name="edited" value="$edited_image"/>
  </View>
  <Header value="Instruction adherence: carried out fully, nothing else changed (1-5)"/>
  <Rating name={quoteattr(INSTRUCTION_CONTROL)} toName="edited" maxRating="5" required="true"/>
  <Header value="Aesthetics: coherent, pleasing, no artefacts (1-5)"/>
  <Rating name={quoteattr(AESTHETICS_CONTROL)} toName="edited" maxRating="5" required="true"/>
  <TextArea name={quoteattr(COMMENT_CONTROL)} toName="edited" placeholder="optional comment"/>
</View>
"""


def export_tasks(
    store: Any, sample: list[dict[str, Any]], output: str, image_url_prefix: str | None = None
) -> tuple[str, int]:
    """Write tasks.json, labeling-config.xml and images/ for a run's sample; returns (where,
    tasks)."""
    from nhr.storage import open_storage

    target = open_storage(output)
    # The prefix is the URL of the uploaded images/ folder itself (as the docs say), joined
    # with exactly one "/" whether or not the user ended it with one.
    if image_url_prefix is None:
        folder_url = LOCAL_FILES_PREFIX + "images/"
    else:
        folder_url = image_url_prefix.rstrip("/") + "/"
    tasks = []
    for item in sample:
        urls = {}
        for field in ("source_image", "edited_image"):
            data = store.images.get(item[field])  # checked: its sha256 is its name
            name = f"{item[field]}.png"
            if not target.exists(f"images/{name}"):
                target.write_bytes(f"images/{name}", data)
            urls[field] = folder_url + name
        tasks.append(
            {
                "data": {
                    "item": item["item"],
                    "instruction": item["instruction"],
                    "category": item["category"],
                    **urls,
                }
            }
        )
    target.write_bytes("tasks.json", json.dumps(tasks, indent=2, ensure_ascii=False).encode())
    target.write_bytes("labeling-config.xml", labeling_config().encode("utf-8"))
    return str(target.where()), len(tasks)


def _rater(annotation: dict[str, Any]) -> str | None:
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # some exports expand the user
        if who.get("email"):
            return str(who["email"])
        who = who.get("id")
    return None if who is None else f"label-studio-user-{who}"


def import_export(data: bytes, where: str) -> list[dict[str, Any]]:
    """Labels rows from a Label Studio JSON export; LabelsError names the task when one is
    unusable, and an export without a single rating is an error too."""
    try:
        tasks = json.loads(data.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise LabelsError(f"{where}: not Label Studio's JSON export ({error})") from None
    if not isinstance(tasks, list):
        raise LabelsError(f"{where}: not Label Studio's JSON export (a list of tasks)")
    rows = []
    for number, task in enumerate(tasks, start=1):
        here = f"{where} task {task.get('id', number) if isinstance(task, dict) else number}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise LabelsError(f"{here}: a task without its data object")
        fields = task["data"]
        for position, annotation in enumerate(_list(here, "annotations", task), start=1):
            if not isinstance(annotation, dict):
                raise LabelsError(f"{here}: annotation {position} is not an object")
            if annotation.get("was_cancelled"):
                continue  # a skipped task: Label Studio keeps it as a cancelled annotation
            label = f"annotation {annotation.get('id', position)}"
            values = _values(f"{here}:{label}", annotation)
            if not values:
                continue  # an annotation of other controls (or an empty draft)
            raw = {
                "item": fields.get("item"),
                "source_image": None if fields.get("item") else fields.get("source_image"),
                "edited_image": None if fields.get("item") else fields.get("edited_image"),
                "instruction": fields.get("instruction"),
                "category": fields.get("category"),
                "rater": _rater(annotation),
                **values,
            }
            rows.append(validate_row(here, label, raw))
    if not rows:  # importing nothing is a mistake (wrong file, or exported before annotating)
        raise LabelsError(
            f"{where}: no ratings in it ({len(tasks)} tasks, none with a submitted annotation "
            "holding both scores)"
        )
    return rows


def _list(here: str, name: str, holder: dict[str, Any]) -> list[Any]:
    """holder[name] as a list (missing or null: empty); anything else is a malformed export."""
    value = holder.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise LabelsError(f"{here}: {name} must be a list, got {type(value).__name__}")
    return value


def _values(here: str, annotation: dict[str, Any]) -> dict[str, Any]:
    """The ratings and comment of one annotation's result regions (raw, validated later)."""
    values: dict[str, Any] = {}
    for position, region in enumerate(_list(here, "result", annotation), start=1):
        if not isinstance(region, dict):
            raise LabelsError(f"{here}: result region {position} is not an object")
        value = region.get("value")
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise LabelsError(f"{here}: result region {position} has a value that is not an object")
        if region.get("from_name") in (INSTRUCTION_CONTROL, AESTHETICS_CONTROL):
            values[region["from_name"]] = value.get("rating")
        elif region.get("from_name") == COMMENT_CONTROL:
            text = value.get("text") or []
            if isinstance(text, str):
                text = [text]
            if not isinstance(text, list) or not all(isinstance(line, str) for line in text):
                raise LabelsError(f"{here}: the comment's text must be a list of strings")
            values[COMMENT_CONTROL] = "\n".join(text) or None
    return values


def import_into_run(store: Any, export: str) -> tuple[str, int, int]:
    """Import the Label Studio JSON export file `export` into RUN/labels/label-studio.parquet;
    returns (where, ratings imported, ratings in the file).

    The import merges by (item, rater), the imported rating replacing the earlier one: no
    earlier import is lost and importing one export twice adds nothing. Nothing is written
    unless the whole export is usable. Ratings imported counts each (item, rater) once."""
    try:
        data = Path(export).read_bytes()
    except OSError as error:
        raise LabelsError(f"{export}: cannot read it ({error.strerror or error})") from None
    rows = import_export(data, export)
    # one rating per (item, rater), as on the rating page: within the export too, a rater's
    # later annotation of a task (Label Studio lists them in the order made) is the rating
    imported = {(row["item"], row["rater"]): row for row in rows}
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    if store.storage.exists(IMPORT_KEY):
        for row in read_labels(store.where(IMPORT_KEY)):
            merged[(row["item"], row["rater"])] = row
    merged.update(imported)
    write_labels(store.storage, IMPORT_KEY, list(merged.values()))
    return str(store.where(IMPORT_KEY)), len(imported), len(merged)
