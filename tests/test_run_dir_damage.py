"""A damaged run directory is repaired by `nhr mine`, or refused with one clear line.

`nhr mine` on a damaged run redoes exactly the shards whose tables or images are damaged and
ends with the dataset of an undamaged run; damaged files, a full disk, a permission problem or
a run directory that is a file give `nhr: error: <path>: ...`, exit 2, no traceback."""

import errno
import os
import shutil
import subprocess
import sys

import pytest
import yaml

import nhr
import nhr.storage
import nhr.store
from helpers import signature, table_rows
from nhr.cli import main
from nhr.store import DamagedImageError, ImageStore, RunDirError, RunStore


def config_yaml(config):
    # sort_keys=False: the order of brief.operations is the design's cycle, so the file must
    # keep the order of the dict the `mined` reference was made from
    return yaml.safe_dump(config, sort_keys=False)


def image_path(run_dir, digest):
    return run_dir / "images" / digest[:2] / f"{digest}.png"


def markers(run_dir):
    """Each marker's identity: a rewritten marker counts as changed even when its bytes came
    out the same (a fast export can take the same milliseconds twice)."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in run_dir.glob("stages/*/*.json")
    }


@pytest.fixture
def damaged_copy(mined, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(mined[0], run_dir)
    return run_dir


def first_released(run_dir):
    return next(r for r in table_rows(run_dir, "compose") if r["status"] == "ok")


def producer_shard(run_dir, stage, column, digest):
    for shard in range(4):
        rows = RunStore(run_dir).read_rows(stage, shard)
        if any(r[column] == digest for r in rows):
            return shard
    raise AssertionError(digest)


def truncate_edit_table(run_dir):
    path = run_dir / "stages" / "edit" / "shard-00001.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return {"stages/edit/shard-00001.done.json"}


def delete_validate_table(run_dir):
    (run_dir / "stages" / "validate" / "shard-00000.parquet").unlink()
    return {"stages/validate/shard-00000.done.json"}


def delete_released_edited_image(run_dir):
    digest = first_released(run_dir)["edited_image"]
    image_path(run_dir, digest).unlink()
    shard = producer_shard(run_dir, "edit", "edited_image", digest)
    return {f"stages/edit/shard-{shard:05d}.done.json"}


def garbage_over_a_source_image(run_dir):
    triplet = next(
        r for r in table_rows(run_dir, "compose") if r["status"] == "ok" and r["kind"] == "forward"
    )
    digest = triplet["source_image"]
    image_path(run_dir, digest).write_bytes(os.urandom(2000))
    shard = producer_shard(run_dir, "generate", "image", digest)
    return {f"stages/generate/shard-{shard:05d}.done.json"}


def garbage_marker(run_dir):
    (run_dir / "stages" / "design" / "_SUCCESS.json").write_text("{ garbage")
    return {"stages/design/_SUCCESS.json"}


@pytest.mark.parametrize(
    "damage",
    [
        truncate_edit_table,
        delete_validate_table,
        delete_released_edited_image,
        garbage_over_a_source_image,
        garbage_marker,
    ],
)
def test_mine_redoes_exactly_the_damaged_shards(mined, damaged_copy, small_config, damage):
    run_dir = damaged_copy
    before = markers(run_dir)
    redone = damage(run_dir) | {"stages/export/_SUCCESS.json"}
    nhr.mine(small_config(), run_dir)
    after = markers(run_dir)
    changed = {name for name in after if after[name] != before.get(name)}
    # a redo is identical (deterministic ids and seeds), so nothing downstream runs again
    assert changed == redone
    assert signature(run_dir) == signature(mined[0])
    from nhr.config import parse_config
    from nhr.verify import check_run

    assert check_run(RunStore(run_dir), parse_config(small_config())) == []


def test_a_shard_whose_input_changed_is_redone(mined, damaged_copy, small_config):
    """What a redo with a non-deterministic model looks like to the next stage: the table it
    read is not the one there now, so it runs again."""
    import json

    run_dir = damaged_copy
    marker_path = run_dir / "stages" / "prefilter" / "shard-00001.done.json"
    marker = json.loads(marker_path.read_text())
    marker["inputs"]["edit"] = "0" * 64
    marker_path.write_text(json.dumps(marker))
    before = markers(run_dir)
    nhr.mine(small_config(), run_dir)
    after = markers(run_dir)
    changed = {name for name in after if after[name] != before.get(name)}
    # its redo came back identical, so neither the next stage nor the export runs again
    assert changed == {"stages/prefilter/shard-00001.done.json"}
    assert signature(run_dir) == signature(mined[0])


def test_redo_from_replaces_a_garbage_image(mined, damaged_copy, small_config):
    """The image store used to skip a path that exists, so garbage survived --redo-from."""
    run_dir = damaged_copy
    image_path(run_dir, first_released(run_dir)["edited_image"]).write_bytes(b"garbage" * 99)
    nhr.mine(small_config(), run_dir, redo_from="edit")
    assert signature(run_dir) == signature(mined[0])


def test_image_store_checks_bytes_against_the_name(tmp_path):
    store = ImageStore(tmp_path)
    digest = store.put(b"image bytes")
    assert store.get(digest) == b"image bytes"
    path = store.where(digest)
    path.write_bytes(b"other bytes")
    fresh = ImageStore(tmp_path)
    with pytest.raises(DamagedImageError, match=str(path)):
        fresh.get(digest)
    assert fresh.put(b"image bytes") == digest  # replaces the damaged file
    assert path.read_bytes() == b"image bytes"
    path.unlink()
    with pytest.raises(DamagedImageError, match="image missing"):
        fresh.get(digest)


def test_a_missing_table_is_an_error_not_an_empty_shard(damaged_copy):
    table = damaged_copy / "stages" / "select" / "shard-00002.parquet"
    table.unlink()
    with pytest.raises(RunDirError, match=str(table)):
        RunStore(damaged_copy).read_rows("select", 2)


def test_a_stage_reading_a_damaged_image_stops_the_run_loudly(
    damaged_copy, small_config, monkeypatch, capsys, tmp_path
):
    """Damage that appears after the start-up check is not turned into failed rows."""
    run_dir = damaged_copy
    import nhr.verify

    monkeypatch.setattr(nhr.verify, "repair", lambda store, config: [])
    (run_dir / "stages" / "edit" / "shard-00001.done.json").unlink()
    source = RunStore(run_dir).read_rows("edit", 1)[0]["source_image"]
    image_path(run_dir, source).write_bytes(b"garbage" * 99)
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml(small_config()))
    assert main(["mine", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"nhr: error: {image_path(run_dir, source)}: image damaged" in error


def nhr_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "nhr.cli", *args], capture_output=True, text=True, timeout=300
    )


def check_one_line_error(done, *fragments):
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("nhr: error:")]
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_garbage_config_yaml_is_named(damaged_copy, small_config, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml(small_config()))
    (damaged_copy / "config.yaml").write_text("run: [unclosed\n")
    path = str(damaged_copy / "config.yaml")
    check_one_line_error(
        nhr_cli("mine", str(config), "--run-dir", str(damaged_copy), "--no-progress"), path
    )
    check_one_line_error(nhr_cli("status", str(damaged_copy)), path)


def test_garbage_marker_is_named_by_status(damaged_copy):
    marker = damaged_copy / "stages" / "validate" / "shard-00001.done.json"
    marker.write_bytes(b"\x00\xff garbage")
    check_one_line_error(nhr_cli("status", str(damaged_copy)), str(marker), "nhr mine")


def test_a_run_dir_that_is_a_file(tmp_path, small_config):
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml(small_config()))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("hello")
    done = nhr_cli("mine", str(config), "--run-dir", str(not_a_dir), "--no-progress")
    check_one_line_error(done, str(not_a_dir), "is a file")
    assert not_a_dir.read_text() == "hello"


def fail_on_write(monkeypatch, pattern, occurrence, error):
    original = nhr.store.atomic_write_bytes
    seen = []

    def write(path, data):
        if pattern in str(path):
            seen.append(path)
            if len(seen) == occurrence:
                raise error(path)
        return original(path, data)

    monkeypatch.setattr(nhr.store, "atomic_write_bytes", write)  # images
    monkeypatch.setattr(nhr.storage, "atomic_write_bytes", write)  # the other files


def test_a_full_disk_stops_with_one_line_and_loses_nothing(
    mined, tmp_path, small_config, monkeypatch, capsys
):
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml(small_config()))
    run_dir = tmp_path / "run"
    fail_on_write(
        monkeypatch,
        "/images/",
        30,
        lambda p: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p)),
    )
    assert main(["mine", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("nhr: error: ") and error.count("\n") == 1, error
    assert "/images/" in error and "No space left on device" in error and "free" in error
    assert not (run_dir / ".lock").exists()
    monkeypatch.undo()
    assert main(["mine", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert signature(run_dir) == signature(mined[0])


def test_a_permission_problem_stops_with_one_line(tmp_path, small_config, monkeypatch, capsys):
    # Tests run as root, which ignores permission bits, so chmod cannot provoke EACCES here:
    # the write raises it as the kernel would for an unwritable directory.
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml(small_config(run={"prompts": 4})))
    run_dir = tmp_path / "run"
    fail_on_write(
        monkeypatch,
        "/stages/",
        1,
        lambda p: PermissionError(errno.EACCES, "Permission denied", str(p)),
    )
    assert main(["mine", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"nhr: error: {run_dir}/stages/") and "Permission denied" in error
    assert "writable" in error and error.count("\n") == 1


def test_files_and_folders_follow_the_umask(tmp_path, small_config):
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml(small_config(run={"prompts": 4})))
    run_dir = tmp_path / "run"
    code = (
        "import os, sys; os.umask(0o022); from nhr.cli import main; "
        f"sys.exit(main(['mine', {str(config)!r}, '--run-dir', {str(run_dir)!r}, '--no-progress']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (run_dir / "dataset").is_dir() and (run_dir / "report").is_dir()
    for path in [run_dir, *run_dir.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_a_table_read_from_bytes_lets_go_of_them_before_returning():
    """Arrow's dataset reader (`pq.read_table`) can drop its last reference to the bytes on a
    worker thread after returning; at interpreter exit that aborts the process (exit -6, seen
    in `nhr verify`). The store's reader must be done with the bytes when it returns."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    table = pa.table({"number": list(range(1000)), "text": ["x" * 50] * 1000})
    pq.write_table(table, sink, row_group_size=100)
    data = sink.getvalue()
    alone = sys.getrefcount(data)
    for _ in range(200):
        read = nhr.store.parse_table("x", data)
        assert sys.getrefcount(data) == alone
        assert read.equals(table)
