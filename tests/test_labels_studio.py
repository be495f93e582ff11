"""Label Studio interop: tasks in its JSON import format with a labeling config, and its JSON
export read into the labels table. The documents follow Label Studio's documented formats
(task format: a list of tasks with `data`, `annotations[].result[]` regions of `from_name`,
`to_name`, `type` and `value`, `completed_by`, `was_cancelled`; the Rating tag's result value
is `{"rating": n}`, the TextArea's `{"text": [...]}`)."""

import json
import re
import shutil
import xml.etree.ElementTree as ElementTree

import pytest

from nhr.cli import main
from nhr.label_sample import run_sample
from nhr.label_studio import export_tasks, import_export, import_into_run, labeling_config
from nhr.labels import LabelsError, item_id, read_labels
from nhr.store import RunStore

OBJECT_TAGS = {"Image", "Text", "HyperText"}
CONTROL_TAGS = {"Rating", "TextArea", "Choices"}


@pytest.fixture(scope="module")
def run_copy(mined, tmp_path_factory):
    run_dir, _ = mined
    copy = tmp_path_factory.mktemp("studio") / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("labels"))
    return copy


def test_the_labeling_config_is_valid_label_studio_xml():
    root = ElementTree.fromstring(labeling_config())
    assert root.tag == "View"
    tags = list(root.iter())
    objects = {t.get("name") for t in tags if t.tag in OBJECT_TAGS}
    controls = [t for t in tags if t.tag in CONTROL_TAGS]
    assert {"source", "edited", "instruction"} <= objects
    for control in controls:  # every control names an object tag it labels
        assert control.get("name") and control.get("toName") in objects
    ratings = {t.get("name"): t for t in tags if t.tag == "Rating"}
    assert set(ratings) == {"instruction_score", "aesthetics_score"}
    assert all(r.get("maxRating") == "5" and r.get("required") == "true" for r in ratings.values())


def test_export_writes_import_format_tasks_with_images(run_copy, tmp_path, capsys):
    out = tmp_path / "ls"
    assert main(["label", str(run_copy), "--sample", "6", "--to-label-studio", str(out)]) == 0
    assert "6 Label Studio tasks" in capsys.readouterr().out
    tasks = json.loads((out / "tasks.json").read_text())
    config = (out / "labeling-config.xml").read_text()
    variables = set(re.findall(r'value="\$(\w+)"', config))
    assert isinstance(tasks, list) and len(tasks) == 6
    sample = run_sample(RunStore(run_copy), 6)
    for task, item in zip(tasks, sample):
        assert set(task) == {"data"}  # import format: data only, no annotations
        assert variables <= set(task["data"])  # every $variable of the config is there
        assert task["data"]["item"] == item["item"]
        for field in ("source_image", "edited_image"):
            url = task["data"][field]
            assert url.startswith("/data/local-files/?d=images/")
            assert (out / url.split("?d=")[1]).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("prefix", ["https://cdn.example/imgs", "https://cdn.example/imgs/"])
def test_the_image_url_prefix_is_the_uploaded_images_folder(run_copy, tmp_path, prefix):
    # the docs: upload DIR/images/ and pass that place; one "/" joins it to the file name
    sample = run_sample(RunStore(run_copy), 2)
    export_tasks(RunStore(run_copy), sample, str(tmp_path), prefix)
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    digest = sample[0]["source_image"]
    assert tasks[0]["data"]["source_image"] == f"https://cdn.example/imgs/{digest}.png"
    assert (tmp_path / "images" / f"{digest}.png").exists()


def annotation(ident, user, instruction, aesthetics, comment=None, cancelled=False):
    result = [
        {
            "id": f"r{ident}a",
            "from_name": "instruction_score",
            "to_name": "edited",
            "type": "rating",
            "origin": "manual",
            "value": {"rating": instruction},
        },
        {
            "id": f"r{ident}b",
            "from_name": "aesthetics_score",
            "to_name": "edited",
            "type": "rating",
            "origin": "manual",
            "value": {"rating": aesthetics},
        },
    ]
    if comment is not None:
        result.append(
            {
                "id": f"r{ident}c",
                "from_name": "comment",
                "to_name": "edited",
                "type": "textarea",
                "origin": "manual",
                "value": {"text": [comment]},
            }
        )
    return {
        "id": ident,
        "completed_by": user,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": "2026-11-30T09:52:49.513742Z",
        "updated_at": "2026-11-30T09:53:08.746926Z",
        "lead_time": 4.288,
        "result_count": 0,
        "task": 1,
        "project": 3,
        "prediction": {},
    }


def export_document():
    """A Label Studio JSON export of three tasks: two run items, one outside triplet."""
    return [
        {
            "id": 1,
            "data": {
                "item": "cand-1",
                "instruction": "Remove the <b>cat</b>",
                "category": "Remove object",
                "source_image": "/data/local-files/?d=images/a.png",
                "edited_image": "/data/local-files/?d=images/b.png",
            },
            "annotations": [
                annotation(11, 7, 4, 5, comment="clean"),
                annotation(12, {"id": 8, "email": "bo@example.org"}, 3, 4),
                annotation(13, 9, 1, 1, cancelled=True),  # skipped, as Label Studio does
            ],
            "predictions": [],
            "meta": {},
            "created_at": "2026-11-30T09:50:00.000000Z",
            "updated_at": "2026-11-30T09:53:08.746926Z",
            "inner_id": 1,
            "total_annotations": 3,
            "cancelled_annotations": 1,
            "total_predictions": 0,
            "project": 3,
            "file_upload": None,
        },
        {"id": 2, "data": {"item": "cand-2", "instruction": "x"}, "annotations": []},
        {
            "id": 3,
            "data": {
                "source_image": "s3://bucket/src.png",
                "edited_image": "s3://bucket/edit.png",
                "instruction": "Make it night",
            },
            "annotations": [annotation(31, 7, 2, 3)],
        },
    ]


def test_import_reads_the_json_export(tmp_path):
    rows = import_export(json.dumps(export_document()).encode(), "export.json")
    assert [(r["item"], r["rater"]) for r in rows] == [
        ("cand-1", "label-studio-user-7"),
        ("cand-1", "bo@example.org"),
        (
            item_id("s3://bucket/src.png", "s3://bucket/edit.png", "Make it night"),
            "label-studio-user-7",
        ),
    ]
    assert rows[0]["instruction_score"] == 4.0 and rows[0]["aesthetics_score"] == 5.0
    assert rows[0]["comment"] == "clean" and rows[1]["comment"] is None
    assert rows[0]["source_image"] is None  # a run item is found by its id, not by URL
    assert rows[2]["source_image"] == "s3://bucket/src.png"


def test_import_names_the_task_of_a_bad_annotation():
    document = export_document()
    document[0]["annotations"][0]["result"][1]["value"]["rating"] = 0
    with pytest.raises(LabelsError, match=r"export.json task 1:annotation 11: aesthetics_score"):
        import_export(json.dumps(document).encode(), "export.json")
    document[0]["annotations"][0]["result"].pop(1)
    with pytest.raises(LabelsError, match="aesthetics_score is missing"):
        import_export(json.dumps(document).encode(), "export.json")
    with pytest.raises(LabelsError, match="not Label Studio's JSON export"):
        import_export(b'{"tasks": []}', "export.json")


def test_cli_imports_into_the_runs_labels(run_copy, tmp_path, capsys):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export_document()))
    assert main(["label", str(run_copy), "--from-label-studio", str(path)]) == 0
    assert "imported 3 ratings" in capsys.readouterr().out
    rows = read_labels(run_copy / "labels" / "label-studio.parquet")
    assert len(rows) == 3 and rows[0]["instruction"] == "Remove the <b>cat</b>"


def malformed(where):
    """export_document() with one part of task 1 broken as `where` says."""
    document = export_document()
    annotations = document[0]["annotations"]
    if where == "null annotation":
        annotations.append(None)
    elif where == "annotations not a list":
        document[0]["annotations"] = {"id": 11}
    elif where == "null region":
        annotations[0]["result"].append(None)
    elif where == "result not a list":
        annotations[0]["result"] = "4 stars"
    elif where == "value not an object":
        annotations[0]["result"][0]["value"] = [4]
    elif where == "comment text not strings":
        annotations[0]["result"][2]["value"]["text"] = [{"x": 1}]
    return document


@pytest.mark.parametrize(
    "where",
    [
        "null annotation",
        "annotations not a list",
        "null region",
        "result not a list",
        "value not an object",
        "comment text not strings",
    ],
)
def test_a_malformed_export_is_one_error_naming_the_file_and_task(where):
    data = json.dumps(malformed(where)).encode()
    with pytest.raises(LabelsError, match=r"^export\.json task 1\b"):
        import_export(data, "export.json")


def test_skipped_and_empty_annotations_are_not_errors():
    # what Label Studio itself writes: a skipped task (cancelled, empty result), null result
    document = export_document()
    document[0]["annotations"] += [
        {"id": 14, "completed_by": 9, "result": [], "was_cancelled": True},
        {"id": 15, "completed_by": 9, "result": None},
    ]
    assert len(import_export(json.dumps(document).encode(), "export.json")) == 3


def test_an_export_without_ratings_is_an_error():
    document = [{"id": 1, "data": {"item": "cand-1"}, "annotations": []}]
    with pytest.raises(LabelsError, match="other.json: no ratings in it"):
        import_export(json.dumps(document).encode(), "other.json")
    with pytest.raises(LabelsError, match="no ratings in it"):
        import_export(b"[]", "other.json")


def write_export(path, document):
    path.write_text(json.dumps(document))
    return str(path)


def rows_by_key(run):
    rows = read_labels(run / "labels" / "label-studio.parquet")
    return {(r["item"], r["rater"]): r for r in rows}, len(rows)


def test_imports_add_up_and_never_lose_or_duplicate_ratings(run_copy, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_copy, run)
    store = RunStore(run)
    first = write_export(tmp_path / "export.json", export_document())
    assert import_into_run(store, first)[1:] == (3, 3)
    assert import_into_run(store, first)[1:] == (3, 3)  # the same export again: no duplicate

    # an empty export: an error, and the earlier ratings are still there
    empty = write_export(tmp_path / "other.json", [{"id": 1, "data": {"item": "x"}}])
    with pytest.raises(LabelsError, match="no ratings"):
        import_into_run(store, empty)
    assert rows_by_key(run)[1] == 3

    # a second project's export adds its ratings; a newer rating of the same item by the
    # same rater replaces the older one
    second = [
        {"id": 1, "data": {"item": "cand-9", "instruction": "y"}, "annotations": []},
        {"id": 2, "data": {"item": "cand-1", "instruction": "x"}, "annotations": []},
    ]
    second[0]["annotations"].append(annotation(91, 7, 5, 5))
    second[1]["annotations"].append(annotation(92, 7, 2, 2))
    second[1]["annotations"].append(annotation(93, 7, 1, 2))  # the same rater again: counts
    where, imported, total = import_into_run(store, write_export(tmp_path / "p2.json", second))
    assert where.endswith("label-studio.parquet") and (imported, total) == (2, 4)
    rows, count = rows_by_key(run)
    assert count == 4
    assert rows[("cand-9", "label-studio-user-7")]["instruction_score"] == 5.0
    assert rows[("cand-1", "label-studio-user-7")]["instruction_score"] == 1.0  # the newer
    assert rows[("cand-1", "bo@example.org")]["instruction_score"] == 3.0  # kept


@pytest.mark.parametrize("name", ["missing.json", "."])
def test_an_unreadable_export_file_is_a_labels_error(run_copy, tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(LabelsError, match=rf"^{re.escape(path)}: cannot read it"):
        import_into_run(RunStore(run_copy), path)


def test_cli_refuses_an_empty_import_and_keeps_the_ratings(run_copy, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_copy, run)
    good = write_export(tmp_path / "export.json", export_document())
    assert main(["label", str(run), "--from-label-studio", good]) == 0
    empty = write_export(tmp_path / "other.json", [])
    assert main(["label", str(run), "--from-label-studio", empty]) == 2
    assert "no ratings in it" in capsys.readouterr().err
    assert rows_by_key(run)[1] == 3
