"""Label Studio interop: the rating sample as Label Studio tasks, and Label Studio's JSON export
back into the labels table (nhr/labels.py).

Export writes, into one folder: `tasks.json` (Label Studio's JSON import format: a list of
tasks `{"data": {...}}`), `labeling-config.xml` (two 1-5 Rating controls and a comment box,
with the source and edited image side by side and the instruction), and `images/` (the
images, named by digest). A task's image fields are `IMAGE_URL_PREFIX + "images/<digest>.png"`;
the default prefix is Label Studio's local-files URL, so serving the folder with local file
storage (LOCAL_FILES_SERVING_ENABLED, LOCAL_FILES_DOCUMENT_ROOT = the folder) just works;
images uploaded elsewhere need that place's URL as the prefix.

Import reads Label Studio's JSON export (a list of tasks with `annotations`, each holding a
`result` list of `{"from_name", "type", "value"}` regions and `completed_by`): one labels row
per submitted, non-cancelled annotation with both ratings. The rater id is the annotator's
e-mail when the export names it, else `label-studio-user-<id>`.
"""

from __future__ import annotations

import json
from typing import Any
from xml.sax.saxutils import quoteattr

from nhr.labels import LabelsError, validate_row

INSTRUCTION_CONTROL = "instruction_score"
AESTHETICS_CONTROL = "aesthetics_score"
COMMENT_CONTROL = "comment"
LOCAL_FILES_PREFIX = "/data/local-files/?d="


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
    prefix = LOCAL_FILES_PREFIX if image_url_prefix is None else image_url_prefix
    tasks = []
    for item in sample:
        urls = {}
        for field in ("source_image", "edited_image"):
            data = store.images.get(item[field])  # checked: its sha256 is its name
            name = f"images/{item[field]}.png"
            if not target.exists(name):
                target.write_bytes(name, data)
            urls[field] = prefix + name
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
    unusable."""
    try:
        tasks = json.loads(data.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as error:
        raise LabelsError(f"{where}: not Label Studio's JSON export ({error})") from None
    if not isinstance(tasks, list):
        raise LabelsError(f"{where}: not Label Studio's JSON export (a list of tasks)")
    rows = []
    for number, task in enumerate(tasks, start=1):
        here = f"{where} task {task.get('id', number) if isinstance(task, dict) else number}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise LabelsError(f"{here}: a task without its data object")
        fields = task["data"]
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            values: dict[str, Any] = {}
            for region in annotation.get("result") or []:
                value = region.get("value") or {}
                if region.get("from_name") in (INSTRUCTION_CONTROL, AESTHETICS_CONTROL):
                    values[region["from_name"]] = value.get("rating")
                elif region.get("from_name") == COMMENT_CONTROL:
                    values[COMMENT_CONTROL] = "\n".join(value.get("text") or []) or None
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
            rows.append(validate_row(here, f"annotation {annotation.get('id', '?')}", raw))
    return rows
