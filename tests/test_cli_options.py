"""Global options and the checks `nhr mine` makes before it creates anything (issue 13)."""

import os
import re
import subprocess
import sys

import pytest
import yaml

import nhr
from nhr.cli import _build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"nhr {nhr.__version__}"


@pytest.mark.parametrize(
    "argv",
    [["-v", "status", "RUN"], ["status", "RUN", "-v"], ["status", "-v", "RUN"]],
)
def test_verbose_before_or_after_the_command(argv):
    args = _build_parser().parse_args(argv)
    assert args.verbose is True and args.quiet is False


def test_quiet_after_the_command_and_not_with_verbose(capsys):
    parser = _build_parser()
    assert parser.parse_args(["mine", "c.yaml", "-q"]).quiet is True
    assert parser.parse_args(
        ["train", "lora", "--base", "b", "--data", "d", "--output", "o", "-q"]
    ).quiet
    args = parser.parse_args(["status", "RUN"])
    assert args.verbose is False and args.quiet is False
    with pytest.raises(SystemExit):
        parser.parse_args(["status", "RUN", "-v", "-q"])
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["0", "-5", "many"])
def test_report_target_must_be_positive(target, capsys):
    with pytest.raises(SystemExit) as done:
        main(["report", "RUN", "--target", target])
    assert done.value.code == 2
    assert "--target" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["calibrate", "L", "--run", "R", "--target-precision", "1.5"], "--target-precision"),
        (["calibrate", "L", "--run", "R", "--target-precision", "nan"], "--target-precision"),
        (["calibrate", "L", "--run", "R", "--confidence", "2"], "--confidence"),
        (["calibrate", "L", "--run", "R", "--min-kept", "-3"], "--min-kept"),
        (["calibrate", "L", "--run", "R", "--bootstrap", "0"], "--bootstrap"),
        (["score", "D", "--judge", "J", "--bootstrap", "0"], "--bootstrap"),
        (["score", "D", "--judge", "J", "--max-pixels", "0"], "--max-pixels"),
        (["label", "RUN", "--simulate-raters", "0"], "--simulate-raters"),
    ],
)
def test_numbers_out_of_range_are_refused_before_any_work(argv, message, capsys):
    """Not a traceback deep in the bootstrap or a report made on an impossible target."""
    try:
        code = main(argv)
    except SystemExit as done:  # argparse's own check
        code = done.code
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_reader_that_goes_away_early_is_no_traceback(mined, command):
    """`nhr status RUN | head -1`: the reader closes before nhr writes (here: at once)."""
    run_dir, _ = mined
    line = f"'{sys.executable}' -m nhr.cli {command} '{run_dir}'; echo \"rc=$?\" >&2"
    done = subprocess.run(
        ["sh", "-c", f"({line}) | true"], capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.stderr.strip().endswith(("rc=141", "rc=0")), done.stderr


def write_config(tmp_path, config) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def test_an_unknown_redo_stage_creates_nothing(tmp_path, small_config, capsys):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, small_config())
    assert main(["mine", config, "--run-dir", str(run_dir), "--redo-from", "desing"]) == 2
    assert "unknown stage 'desing'" in capsys.readouterr().err
    assert not run_dir.exists()


def keyless(small_config):
    config = small_config(run={"prompts": 4})
    config["models"]["designer"] = {
        "backend": "gemini",
        "model": "gemini-2.5-flash",
        "api_key_env": "NHR_TEST_UNSET_KEY",
    }
    return config


@pytest.mark.parametrize("preflight", [True, False])
def test_a_missing_key_leaves_no_run_directory(tmp_path, small_config, monkeypatch, preflight):
    monkeypatch.delenv("NHR_TEST_UNSET_KEY", raising=False)
    run_dir = tmp_path / "run"
    argv = ["mine", write_config(tmp_path, keyless(small_config)), "--run-dir", str(run_dir)]
    assert main(argv + ([] if preflight else ["--skip-preflight"]) + ["-q"]) == 2
    assert not run_dir.exists()


def test_a_missing_extra_leaves_no_run_directory(tmp_path, small_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    monkeypatch.delitem(sys.modules, "nhr.executors.ray", raising=False)
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, small_config())
    assert main(["mine", config, "--run-dir", str(run_dir), "--executor", "ray", "-q"]) == 2
    assert not run_dir.exists()


def test_photo_sources_that_cannot_be_read_leave_no_run_directory(tmp_path, small_config, capsys):
    config = small_config(sources={"kind": "images", "path": str(tmp_path / "no-such-folder")})
    config["models"]["describer"] = {"backend": "sim"}
    run_dir = tmp_path / "run"
    assert main(["mine", write_config(tmp_path, config), "--run-dir", str(run_dir), "-q"]) == 2
    assert "no such folder or file" in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_failed_start_keeps_a_run_that_was_there(tmp_path, small_config, monkeypatch):
    """Only what this command created is removed: an existing run keeps every file."""
    monkeypatch.delenv("NHR_TEST_UNSET_KEY", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    config = write_config(tmp_path, keyless(small_config))
    assert main(["mine", config, "--run-dir", str(run_dir), "--skip-preflight", "-q"]) == 2
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_a_missing_key_leaves_nothing_on_object_storage(bucket, small_config, monkeypatch):
    import s3fs

    monkeypatch.delenv("NHR_TEST_UNSET_KEY", raising=False)
    run_dir = f"{bucket}/runs/r"
    with pytest.raises(Exception, match="NHR_TEST_UNSET_KEY"):
        nhr.mine(keyless(small_config), run_dir, preflight=False)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    fs.invalidate_cache()
    assert fs.find(bucket.removeprefix("s3://")) == []


def test_a_large_run_first_prints_the_calls_to_expect(small_config):
    from nhr.analysis.estimate import reference_calls
    from nhr.cli import _large_run_notice
    from nhr.config import parse_config

    assert _large_run_notice(parse_config(small_config()), "nowhere") is None  # 16 prompts
    config = parse_config(small_config(run={"prompts": 5000}))
    notice = _large_run_notice(config, "nowhere")
    assert "5,000 prompts" in notice and "reference run" in notice
    calls = reference_calls(config, 5000)
    for label, count in calls.items():
        assert re.search(rf"^  {re.escape(label)} +{count:,}$", notice, re.M), label
    assert calls["edit (editor)"] > 0 and calls["design (designer)"] > 0
    assert re.search(r"^  about [\d,]+ released triplets$", notice, re.M)
    assert "mine a pilot first" in notice  # the reference's attempts are an assumption


def test_the_reference_estimate_follows_the_config(small_config):
    """Gate and validator samples, a second judge and the pre-filter's checks multiply their
    stages' calls; an edit budget caps the editor's."""
    from nhr.analysis.estimate import reference_calls
    from nhr.config import parse_config

    base = reference_calls(parse_config(small_config(run={"prompts": 5000})), 5000)
    more = reference_calls(
        parse_config(
            small_config(
                run={"prompts": 5000},
                plausibility={"samples": 3},
                validate={"samples": 3, "second_judge": True, "second_judge_rule": "mean"},
                schedule={"budget": {"edits": 100}},
                models={"second_validator": {"backend": "sim", "model": "other"}},
            )
        ),
        5000,
    )
    assert more["plausibility (gate)"] == 3 * base["plausibility (gate)"]
    assert more["edit (editor)"] == 100
    judged = more["validate (validator, second_validator)"] / more["edit (editor)"]
    assert judged > 5.9 * base["validate (validator)"] / base["edit (editor)"]  # 3 samples x 2


def test_a_large_run_scales_from_the_finished_run_in_its_directory(mined, small_config):
    from nhr.cli import _large_run_notice
    from nhr.config import parse_config

    run_dir, result = mined  # 16 prompts, finished
    notice = _large_run_notice(parse_config(small_config(run={"prompts": 1600})), str(run_dir))
    assert "this run's 16 mined prompts, scaled" in notice
    edit = next(s for s in result.stats["stages"] if s["stage"] == "edit")
    assert re.search(rf"^  edit \(editor\) +{edit['model_calls'] * 100:,}$", notice, re.M)
    released = result.stats["dataset"]["rows"] * 100
    assert re.search(rf"^  about {released:,} released triplets$", notice, re.M)
    assert "pilot" not in notice  # measured: no assumption to warn about


def test_mine_prints_the_notice_unless_quiet(tmp_path, small_config, monkeypatch, capsys):
    import nhr.cli

    monkeypatch.setattr(nhr.cli, "LARGE_RUN_PROMPTS", 2)
    config = write_config(tmp_path, small_config(run={"prompts": 4}))
    assert main(["mine", config, "--run-dir", str(tmp_path / "a"), "--no-progress"]) == 0
    assert "4 prompts; model calls to expect" in capsys.readouterr().err
    assert main(["mine", config, "--run-dir", str(tmp_path / "b"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_report_prints_the_estimate_and_q_only_where_the_report_is(mined, capsys):
    run_dir, _ = mined
    assert main(["report", str(run_dir), "--target", "5000"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^  for 5,000 released triplets: about [\d,]+ prompts, [\d,]+ model calls", out, re.M
    )
    assert "estimate.json" in out
    assert main(["report", str(run_dir), "-q"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"report for the finished run: {run_dir / 'report' / 'index.html'}"
    ]


def test_two_ways_to_label_at_once_are_refused(mined, tmp_path, capsys):
    run_dir, _ = mined
    argv = ["label", str(run_dir), "--sample", "3", "--simulate-raters", "2"]
    assert main([*argv, "--to-label-studio", str(tmp_path / "ls")]) == 2
    assert "--simulate-raters and --to-label-studio are different ways" in capsys.readouterr().err
    assert not (tmp_path / "ls").exists()


@pytest.mark.parametrize("value", ["6", "0.5", "nan"])
def test_calibrate_positive_above_is_on_the_label_scale(tmp_path, capsys, value):
    labels = tmp_path / "labels.csv"
    labels.write_text("item,rater,instruction_score,aesthetics_score\na,r,4,4\n")
    argv = ["calibrate", str(labels), "--judge", "configs/quickstart.yaml"]
    assert main([*argv, "--positive-above", value]) == 2
    assert "--positive-above is on the labels' 1-5 scale" in capsys.readouterr().err
