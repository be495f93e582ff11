"""`nhr verify RUN`: every marker against its table, every referenced image, the dataset."""

import hashlib
import io
import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
from PIL import Image

from helpers import table_rows


def nhr(*args):
    return subprocess.run(
        [sys.executable, "-m", "nhr.cli", *args], capture_output=True, text=True, timeout=300
    )


def image_path(run_dir, digest):
    return run_dir / "images" / digest[:2] / f"{digest}.png"


def released(run_dir):
    return [r for r in table_rows(run_dir, "compose") if r["status"] == "ok"]


def test_a_clean_run_verifies(mined):
    run_dir, _ = mined
    done = nhr("verify", str(run_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no damage found" in done.stdout


def test_verify_names_every_damaged_file(mined, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    truncated = run_dir / "stages" / "edit" / "shard-00001.parquet"
    truncated.write_bytes(truncated.read_bytes()[:200])
    gone_table = run_dir / "stages" / "validate" / "shard-00000.parquet"
    gone_table.unlink()
    marker = run_dir / "stages" / "prefilter" / "shard-00002.done.json"
    marker.write_text("{not json")
    rows = released(run_dir)
    missing = image_path(run_dir, rows[0]["edited_image"])
    missing.unlink()
    garbage = image_path(run_dir, rows[-1]["source_image"])
    garbage.write_bytes(b"\x89PNG garbage" * 50)
    dataset_file = next((run_dir / "dataset" / "data").glob("train-*.parquet"))
    dataset_file.write_bytes(dataset_file.read_bytes()[:-100])

    done = nhr("verify", str(run_dir))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    for path in (truncated, gone_table, marker, missing, garbage, dataset_file):
        assert str(path) in done.stdout, path
    assert "problems in" in done.stdout.splitlines()[-1]


def test_verify_finds_an_image_that_does_not_decode(mined, tmp_path):
    """A released image whose name matches its bytes but which does not decode (as a model
    could write it): verify reports it and export refuses to release it."""
    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    broken = break_a_released_image(run_dir)
    done = nhr("verify", str(run_dir))
    assert done.returncode == 1
    assert f"{broken}: image does not decode" in done.stdout
    exported = nhr("export", str(run_dir))
    assert exported.returncode == 2
    assert "Traceback" not in exported.stderr
    assert str(broken) in exported.stderr


def break_a_released_image(run_dir):
    """Point the first released triplet at a truncated PNG stored under its own hash, keeping
    the table's marker consistent, so only the image is wrong."""
    table = run_dir / "stages" / "compose" / "shard-00000.parquet"
    rows = pq.read_table(table).to_pylist()
    target = next(r for r in rows if r["status"] == "ok")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()[:-40]  # header intact, pixels cut off
    digest = hashlib.sha256(data).hexdigest()
    image_path(run_dir, digest).parent.mkdir(exist_ok=True)
    image_path(run_dir, digest).write_bytes(data)
    target["edited_image"] = digest
    schema = pq.read_schema(table)
    pq.write_table(pq.read_table(table).from_pylist(rows, schema=schema), table)
    marker_path = table.with_name("shard-00000.done.json")
    marker = json.loads(marker_path.read_text())
    marker["table_sha256"] = hashlib.sha256(table.read_bytes()).hexdigest()
    marker_path.write_text(json.dumps(marker))
    return image_path(run_dir, digest)


def test_verify_on_a_folder_that_is_not_a_run(tmp_path):
    done = nhr("verify", str(tmp_path))
    assert done.returncode == 2
    assert "not an nhr run directory" in done.stderr and "Traceback" not in done.stderr


def test_verify_compares_the_dataset_with_the_release_stage(mined, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    path = sorted((run_dir / "dataset" / "data").glob("train-*.parquet"))[0]
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["edited_image"] = rows[1]["edited_image"]  # a whole, decodable, wrong image
    dropped = rows.pop()  # and a released triplet left out
    pq.write_table(table.from_pylist(rows, schema=table.schema), path)
    done = nhr("verify", str(run_dir))
    assert done.returncode == 1
    assert f"{rows[0]['sample_id']}: edited_image differs from the store's image" in done.stdout
    assert f"missing from the dataset, e.g. {dropped['sample_id']}" in done.stdout
