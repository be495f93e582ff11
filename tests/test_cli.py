"""The command line: clear messages and exit status 2 for what a user must fix."""

import re
import subprocess
import sys

import yaml


def nhr(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "nhr.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_help_is_fast_and_lists_commands():
    done = nhr("--help")
    assert done.returncode == 0
    for command in ("mine", "status", "export"):
        assert command in done.stdout


def test_import_nhr_is_light():
    code = "import sys, nhr; heavy = {'pyarrow', 'numpy', 'PIL', 'torch', 'scipy', 'pydantic'} & set(sys.modules); print(sorted(heavy))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]"


def check_usage_error(done, fragment):
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert fragment in done.stderr


def test_missing_config_file(tmp_path):
    check_usage_error(
        nhr("mine", str(tmp_path / "nope.yaml"), "--run-dir", str(tmp_path / "r")),
        "config file not found",
    )


def test_malformed_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  prompts: -3\n  colour: red\n")
    done = nhr("mine", str(path), "--run-dir", str(tmp_path / "r"))
    check_usage_error(done, "run.prompts")
    assert "run.colour: unknown key" in done.stderr


def test_unparseable_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run: {prompts: [\n")
    check_usage_error(nhr("mine", str(path), "--run-dir", str(tmp_path / "r")), "not valid YAML")


def test_unknown_backend(tmp_path, small_config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(models={"validator": {"backend": "skynet"}})))
    check_usage_error(nhr("mine", str(path), "--run-dir", str(tmp_path / "r")), "models.validator")


def test_a_missing_role_or_an_empty_config_is_a_usage_error(tmp_path, small_config):
    config = small_config()
    del config["models"]["inverter"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    done = nhr("mine", str(path), "--run-dir", str(tmp_path / "r"))
    check_usage_error(done, "models.inverter: missing; every role needs a model")
    path.write_text("# nothing but a comment\n")
    check_usage_error(nhr("mine", str(path), "--run-dir", str(tmp_path / "r")), "is empty")
    assert not (tmp_path / "r").exists()


def test_status_of_a_finished_run(mined):
    run_dir, result = mined
    done = nhr("status", str(run_dir))
    assert done.returncode == 0
    assert "finished" in done.stdout
    for stage in ("design", "generate", "validate", "select", "export"):
        assert stage in done.stdout
    check_usage_error(nhr("status", str(run_dir / "nope")), "not an nhr run directory")


def test_mine_and_export_commands(tmp_path, small_config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(run={"prompts": 8})))
    done = nhr("mine", str(path), "--run-dir", str(tmp_path / "r"), "--no-progress", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert "triplets into" in done.stdout
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["run"]["seed"] == 3
    again = nhr("export", str(tmp_path / "r"))
    assert again.returncode == 0 and "exported" in again.stdout
    refused = nhr("mine", str(path), "--run-dir", str(tmp_path / "r"), "--seed", "4")
    check_usage_error(refused, "run.seed: 3 -> 4")


def test_a_run_directory_being_mined_is_refused(tmp_path, small_config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(run={"prompts": 4})))
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(str(other.pid))
        check_usage_error(nhr("mine", str(path), "--run-dir", str(run_dir)), f"process {other.pid}")
    finally:
        other.kill()
        other.wait()
    # the owner is gone (as after SIGKILL): the next miner takes the lock over
    done = nhr("mine", str(path), "--run-dir", str(run_dir), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert not (run_dir / ".lock").exists()


def test_progress_bars_count_shards_per_stage(tmp_path, small_config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(run={"prompts": 8})))
    done = nhr("mine", str(path), "--run-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    for stage in ("generate", "edit", "validate"):  # stderr is no terminal: progress lines
        assert re.search(rf"{stage}: 2/2 shards \(100%\), \d+ items", done.stderr), stage
    # at this size compose may have nothing to combine: its bar still counts its shards
    assert re.search(r"compose: 2/2 shards", done.stderr)


def test_a_missing_key_stops_the_run_naming_the_variable(tmp_path, small_config):
    import os

    config = small_config(run={"prompts": 4})
    config["models"]["designer"] = {
        "backend": "gemini",
        "model": "gemini-2.5-flash",
        "api_key_env": "NHR_TEST_UNSET_KEY",
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "NHR_TEST_UNSET_KEY"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nhr.cli",
            "mine",
            str(path),
            "--run-dir",
            str(tmp_path / "r"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    check_usage_error(done, "NHR_TEST_UNSET_KEY")


def test_status_of_a_run_being_mined(mined, tmp_path):
    import shutil

    run_dir, _ = mined
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "stages" / "export")
    (copy / "stages" / "select" / "shard-00002.done.json").unlink()
    miner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (copy / ".lock").write_text(str(miner.pid))
        done = nhr("status", str(copy))
    finally:
        miner.kill()
        miner.wait()
    assert done.returncode == 0
    assert f"mining (pid {miner.pid})" in done.stdout
    assert re.search(r"select\s+3/4", done.stdout)
    stopped = nhr("status", str(copy))
    assert "stopped before the end" in stopped.stdout


def test_verify_is_a_command():
    done = nhr("verify", "--help")
    assert done.returncode == 0 and "run_dir" in done.stdout


def test_executor_ray_without_ray_is_one_line_and_exit_2(
    tmp_path, small_config, monkeypatch, capsys
):
    """`--executor ray` where ray is not installed names the extra, before any stage runs."""
    from nhr.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    monkeypatch.delitem(sys.modules, "nhr.executors.ray", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config(), sort_keys=False))
    run_dir = tmp_path / "run"
    argv = ["mine", str(config), "--run-dir", str(run_dir), "--no-progress", "--executor", "ray"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nhr: error: ")
    assert "pip install 'nhr[ray]'" in err
    assert not (run_dir / "stages").exists()


def test_run_executor_in_yaml_is_checked(tmp_path, small_config):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config(run={"executor": "spark"}), sort_keys=False))
    check_usage_error(nhr("mine", str(config), "--run-dir", str(tmp_path / "run")), "executor")


def test_a_reader_that_goes_away_is_no_traceback(mined):
    """`nhr report RUN | head`: the pipe closes early; nhr stops quietly with 141 (SIGPIPE)."""
    run_dir, _ = mined
    command = f"'{sys.executable}' -m nhr.cli report '{run_dir}'; echo \"rc=$?\" >&2"
    done = subprocess.run(
        ["sh", "-c", f"({command}) | true"], capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(("rc=141", "rc=0")), done.stderr  # 0: all written first
