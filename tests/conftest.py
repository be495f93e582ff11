import copy
import os
from pathlib import Path

import pytest
import yaml

# An accidental hub call must fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def small_config_dict(**sections) -> dict:
    """The quickstart config at a size that mines in a few seconds, with section overrides."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["run"].update(prompts=16, shard_size=4)
    data["design"]["batch_size"] = 8
    data["generate"]["images_per_prompt"] = 2
    data["schedule"]["seeds_per_pair"] = 2
    for name, values in sections.items():
        target = data.setdefault(name, {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = {**target[key], **value}
            else:
                target[key] = copy.deepcopy(value)
    return data


@pytest.fixture(scope="session")
def small_config():
    """A function building the small config, usable by fixtures of any scope."""
    return small_config_dict


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray instance for the whole session: 2 CPUs and 2 fake GPUs (actors of the tests use
    fractional CPUs, so they never starve the tasks that read and write)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def mined(tmp_path_factory):
    """One small finished run shared by the tests that only read it."""
    import nhr

    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, nhr.mine(small_config_dict(), run_dir)


# -- object storage: one local S3 server (moto) for the session ---------------------------------
# The endpoint and dummy credentials go into the environment at import time, before any Ray
# instance starts, so Ray workers inherit them as a cluster's nodes would have their own.
def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


S3_PORT = _free_port()
os.environ.setdefault("AWS_ENDPOINT_URL", f"http://127.0.0.1:{S3_PORT}")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "nhr-test-key-id-4d1c")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "nhr-test-secret-9f3a")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (the endpoint in AWS_ENDPOINT_URL) for the session."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def bucket(s3_server, request):
    """A fresh, empty bucket for one test: its s3:// URL."""
    import re

    import s3fs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{name}-{os.urandom(3).hex()}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(name)
    return f"s3://{name}"
