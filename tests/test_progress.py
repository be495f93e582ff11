"""Progress that works in logs: on a non-terminal output, one line every N seconds (stage,
done/total, rate, ETA) and one at the end of each stage; a resumed stage counts its whole
work; the design bar counts prompts."""

import io
import re

import pytest
import yaml

import nhr
from nhr.executors.base import Progress


def test_a_line_every_interval_with_rate_and_eta():
    stream = io.StringIO()
    progress = Progress("edit", total=4, done=1, stream=stream, every=0)
    progress.items(10)
    progress.shard_done()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    # one shard was done before (a resume); nothing done yet in this process at the first line
    assert lines[0].startswith("edit: 1/4 shards (25%), 10 items since resuming, ")
    assert re.match(
        r"edit: 2/4 shards \(50%\), 10 items since resuming, [\d.e+]+ shards/s, ETA \d+s$",
        lines[1],
    )
    assert re.match(r"edit: 2/4 shards \(50%\), 10 items since resuming, done in \d+s$", lines[2])


def test_no_line_before_the_interval():
    stream = io.StringIO()
    progress = Progress("edit", total=3, stream=stream, every=3600)
    for _ in range(3):
        progress.items(100)
        progress.shard_done()
    progress.close()
    assert stream.getvalue().splitlines() == [
        stream.getvalue().splitlines()[0]
    ] and stream.getvalue().startswith("edit: 3/3 shards (100%), 300 items, done in ")


def test_design_counts_prompts_and_a_resume_counts_the_whole_stage(tmp_path, small_config, capsys):
    run_dir = tmp_path / "run"
    config = small_config(run={"prompts": 8})  # 8 prompts in 2 shards
    nhr.mine(config, run_dir, progress=True, preflight=False)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.search(r"^design: 8/8 prompts \(100%\), done in", err, re.M)
    assert re.search(r"^edit: 2/2 shards \(100%\), \d+ items, done in", err, re.M)
    (run_dir / "stages" / "edit" / "shard-00001.done.json").unlink()
    nhr.mine(config, run_dir, progress=True, preflight=False)
    err = capsys.readouterr().err
    # one shard redone: the line still says 2/2, not 1/1
    assert re.search(r"^edit: 2/2 shards \(100%\), \d+ items since resuming, done in", err, re.M)
    assert "design:" not in err  # up to date: no line


def test_a_resumed_stage_says_its_items_are_since_resuming():
    stream = io.StringIO()
    progress = Progress("edit", total=4, done=3, stream=stream, every=3600)
    progress.items(7)
    progress.shard_done()
    progress.close()
    assert stream.getvalue().startswith("edit: 4/4 shards (100%), 7 items since resuming, done in")


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
def test_a_bad_progress_interval_is_one_line_and_creates_nothing(
    tmp_path, small_config, monkeypatch, capsys, value
):
    from nhr.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(small_config(run={"prompts": 4})))
    monkeypatch.setenv("NHR_PROGRESS_EVERY", value)
    run_dir = tmp_path / "run"
    assert main(["mine", str(config), "--run-dir", str(run_dir), "--skip-preflight"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"nhr: error: NHR_PROGRESS_EVERY must be a positive number of seconds, not {value!r}"
    ]
    assert not run_dir.exists()


def test_a_terminal_that_reports_no_width_gets_log_lines():
    import os
    import pty

    leader, follower = pty.openpty()  # a pty whose size was never set: 0 columns
    try:
        with os.fdopen(follower, "w", closefd=False) as stream:
            assert os.get_terminal_size(follower).columns == 0
            progress = Progress("edit", total=1, stream=stream, every=3600)
            assert progress.bar is None
            progress.close()
    finally:
        os.close(leader)
        os.close(follower)
