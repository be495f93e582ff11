"""Run directories on object storage: a local S3 server (moto, tests/conftest.py), s3fs, and
`memory://` for the storage layer itself. The dataset of a run on S3 must be identical to the
same run on local disk, every command must accept the URL, and two drivers never mine one
run (a lease with owner and expiry)."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

import nhr
from helpers import mine_command
from nhr.cli import main
from nhr.lock import LEASE_KEY, LeaseLostError, ObjectLease
from nhr.storage import ObjectStorage, StorageSetupError, open_storage
from nhr.store import RunStore, table_from_bytes

pytest.importorskip("s3fs")


def dataset_files(location) -> dict[str, bytes]:
    storage = RunStore(location).storage
    return {
        name: storage.read_bytes(f"dataset/data/{name}") for name in storage.names("dataset/data")
    }


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_digest(location) -> dict[str, str]:
    return {name: digest(data) for name, data in dataset_files(location).items()}


def signature_at(location):
    """Sample ids and the digests of their image bytes, in order (digests keep the diff of a
    failing comparison short)."""
    rows = [
        row
        for data in dataset_files(location).values()
        for row in table_from_bytes(data).to_pylist()
    ]
    return [
        (r["sample_id"], digest(r["source_image"]["bytes"]), digest(r["edited_image"]["bytes"]))
        for r in rows
    ]


def counts(stats):
    """The stats that must match between two runs: rows in, out, dropped and failed."""
    return [
        (s["stage"], s["rows_in"], s["rows_out"], s["dropped"], s["failed"])
        for s in stats["stages"]
    ], stats["dataset"]


def write_config(tmp_path, config) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


# -- the storage layer -----------------------------------------------------------------------


def test_object_storage_basics_on_memory():
    storage = open_storage(f"memory://nhr-{os.urandom(4).hex()}/run")
    assert isinstance(storage, ObjectStorage)
    storage.write_bytes("stages/a/shard-00000.parquet", b"x")
    storage.write_bytes("stages/a/shard-00000.done.json", b"{}")
    assert storage.names("stages/a") == ["shard-00000.done.json", "shard-00000.parquet"]
    assert storage.names("stages/missing") == []
    assert storage.create_exclusive("lease", b"1") and not storage.create_exclusive("lease", b"2")
    assert storage.read_bytes("lease") == b"1"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("nothing")
    storage.delete("nothing")  # missing is fine
    with storage.replace_folder("dataset") as folder:
        folder.write_bytes("data/train-00000-of-00002.parquet", b"a")
        folder.write_bytes("data/train-00001-of-00002.parquet", b"b")
    with storage.replace_folder("dataset") as folder:
        folder.write_bytes("data/train-00000-of-00001.parquet", b"c")
    assert storage.names("dataset/data") == ["train-00000-of-00001.parquet"]
    storage.delete_folder("stages")
    assert storage.names("stages/a") == []


def test_a_missing_storage_driver_says_which_extra(monkeypatch):
    import fsspec.core

    def no_driver(url, **options):
        raise ImportError("Install s3fs to access S3", name="s3fs")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_driver)
    with pytest.raises(StorageSetupError, match=r"pip install 'nhr\[s3\]'"):
        RunStore("s3://bucket/run")


# -- runs on S3 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_run(s3_server, small_config, tmp_path_factory):
    """The small run mined into a bucket (module scope: several tests read it)."""
    import s3fs

    name = f"shared-{os.urandom(3).hex()}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}).mkdir(name)
    url = f"s3://{name}/runs/small"
    return url, nhr.mine(small_config(), url)


def test_a_run_on_s3_is_identical_to_one_on_local_disk(mined, s3_run):
    local_dir, local = mined
    url, remote = s3_run
    assert remote.run_dir == url
    assert files_digest(url) == files_digest(local_dir)  # the same bytes, file by file
    assert counts(remote.stats) == counts(local.stats)
    assert signature_at(url) and signature_at(url) == signature_at(local_dir)
    storage = RunStore(url).storage
    assert not storage.exists(LEASE_KEY)  # released at the end
    assert storage.exists("report/stats.json") and storage.exists("dataset/README.md")


def test_every_command_accepts_an_s3_url(s3_run, capsys):
    url, _ = s3_run
    assert main(["status", url]) == 0
    assert f"run {url}: finished" in capsys.readouterr().out
    assert main(["verify", url]) == 0
    assert "no damage found" in capsys.readouterr().out
    assert main(["report", url]) == 0
    assert f"{url}/report/index.html" in capsys.readouterr().out
    assert RunStore(url).storage.exists("report/index.html")
    before = files_digest(url)
    assert main(["export", url]) == 0
    assert f"{url}/dataset" in capsys.readouterr().out
    assert files_digest(url) == before


def test_no_credential_is_written_to_the_run(s3_run):
    url, _ = s3_run
    storage = RunStore(url).storage
    secrets = [
        os.environ["AWS_SECRET_ACCESS_KEY"].encode(),
        os.environ["AWS_ACCESS_KEY_ID"].encode(),
    ]
    keys = [path for path in storage.fs.find(storage.base)]
    assert len(keys) > 20
    for key in keys:
        data = storage.fs.cat_file(key)
        assert not any(secret in data for secret in secrets), key


def test_damage_on_s3_is_found_and_repaired(bucket, small_config, mined, capsys):
    url = f"{bucket}/run"
    nhr.mine(small_config(), url)
    store = RunStore(url)
    digest = dataset_rows_first_image(url)
    store.storage.write_bytes(store.images.key(digest), b"garbage")
    assert main(["verify", url]) == 1
    assert "image damaged" in capsys.readouterr().out
    nhr.mine(small_config(), url)
    assert main(["verify", url]) == 0
    assert signature_at(url) == signature_at(mined[0])


def dataset_rows_first_image(url) -> str:
    return signature_at(url)[0][2]


def test_a_changed_config_is_refused_on_s3(s3_run, small_config, tmp_path, capsys):
    url, _ = s3_run
    changed = small_config(run={"seed": 99})
    assert main(["mine", write_config(tmp_path, changed), "--run-dir", url, "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "the config differs" in error and "run.seed" in error


def test_a_missing_bucket_is_one_clear_error(s3_server, small_config, tmp_path, capsys):
    url = f"s3://no-such-bucket-{os.urandom(3).hex()}/run"
    config = write_config(tmp_path, small_config())
    assert main(["mine", config, "--run-dir", url, "--no-progress", "--skip-preflight"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("nhr: error: ") and "bucket does not exist" in error


# -- the lease ---------------------------------------------------------------------------------


def test_a_second_driver_is_refused_while_the_lease_holds(bucket, small_config, tmp_path, capsys):
    url = f"{bucket}/run"
    config = write_config(tmp_path, small_config(run={"prompts": 4}))
    with ObjectLease(RunStore(url)):
        assert main(["mine", config, "--run-dir", url, "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert f"is in use by process {os.getpid()}" in error and "lease" in error
    assert main(["mine", config, "--run-dir", url, "--no-progress"]) == 0


def test_status_shows_who_mines_an_s3_run(s3_run, capsys):
    url, _ = s3_run
    store = RunStore(url)
    store.remove_marker("export", None)  # as if still mining
    try:
        with ObjectLease(store):
            assert main(["status", url]) == 0
            assert f"mining (pid {os.getpid()})" in capsys.readouterr().out
    finally:
        assert main(["export", url]) == 0


def status_in_a_fresh_process(env: dict[str, str]) -> subprocess.CompletedProcess:
    """`nhr status s3://some-bucket/run` in a new process with this environment (SDK clients
    and credentials are cached per process)."""
    return subprocess.run(
        [sys.executable, "-m", "nhr.cli", "status", "s3://some-bucket/run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_missing_credentials_are_one_clear_error(s3_server, tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    done = status_in_a_fresh_process(env)
    assert done.returncode == 2
    assert (
        done.stderr.startswith("nhr: error: s3://some-bucket/run/")
        and "AWS_ACCESS_KEY_ID" in done.stderr
    )
    assert done.stderr.count("\n") == 1


def test_an_unreachable_object_store_is_one_clear_error(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    env = {**os.environ, "AWS_ENDPOINT_URL": dead, "AWS_MAX_ATTEMPTS": "1"}
    done = status_in_a_fresh_process(env)
    assert done.returncode == 2
    assert done.stderr.startswith("nhr: error: s3://some-bucket/run/")
    assert "cannot reach the object store" in done.stderr and done.stderr.count("\n") == 1


def test_an_expired_lease_is_taken_over(bucket, small_config, tmp_path):
    url = f"{bucket}/run"
    store = RunStore(url)
    other = {"host": "elsewhere", "pid": 1, "owner": "x", "expires": time.time() - 1}
    store.storage.write_bytes(LEASE_KEY, json.dumps(other).encode())
    config = write_config(tmp_path, small_config(run={"prompts": 4}))
    assert main(["mine", config, "--run-dir", url, "--no-progress"]) == 0
    live = {**other, "expires": time.time() + 600}
    store.storage.write_bytes(LEASE_KEY, json.dumps(live).encode())
    assert main(["mine", config, "--run-dir", url, "--no-progress"]) == 2  # elsewhere: alive


def test_a_driver_that_lost_its_lease_commits_nothing(bucket):
    store = RunStore(f"{bucket}/run")
    lease = ObjectLease(store, ttl_s=600)
    with lease:
        store.mark_done("design", None, {"shards": 0})  # held: commits
        thief = {"host": "elsewhere", "pid": 1, "owner": "thief", "expires": time.time() + 600}
        store.storage.write_bytes(LEASE_KEY, json.dumps(thief).encode())
        lease.renew()
        with pytest.raises(LeaseLostError, match="another driver took over"):
            store.mark_done("design", None, {"shards": 0})
    assert json.loads(store.storage.read_bytes(LEASE_KEY))["owner"] == "thief"  # not removed


def test_a_killed_driver_on_s3_resumes_to_the_identical_dataset(
    bucket, small_config, mined, tmp_path
):
    """SIGKILL `nhr mine` once edit shards are committed; the rerun takes over the dead
    driver's lease at once (same machine, process gone) and finishes identically."""
    url = f"{bucket}/run"
    config = write_config(tmp_path, small_config())
    store = RunStore(url)
    driver = subprocess.Popen(mine_command(config, url), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not store.done_shards("edit") and driver.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert store.storage.exists(LEASE_KEY)  # left behind by the killed driver
    done = subprocess.run(mine_command(config, url), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert signature_at(url) == signature_at(mined[0])


def test_the_ray_executor_mines_into_s3_identically(ray_cluster, bucket, small_config, mined):
    url = f"{bucket}/run"
    result = nhr.mine(small_config(), url, executor="ray")
    assert files_digest(url) == files_digest(mined[0])
    assert counts(result.stats) == counts(mined[1].stats)
