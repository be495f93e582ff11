"""What replicas share on Ray: one API limit per model across all replicas (a server's limit is
global), and one broken-backend watch per stage across all actors. API roles talk to the fake
OpenAI-compatible server, which counts what it receives."""

import shutil
import sys
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

import nhr  # noqa: E402
from nhr.calls import BrokenBackendError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "backends"))
from fake_api_server import FakeApiServer  # noqa: E402

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def small() -> dict:
    """The quickstart at 8 prompts (4 shards)."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["run"].update(prompts=8, shard_size=2)
    return data


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A finished local run: the Ray runs below redo it from validate, so only the roles of
    validate and later start actors."""
    run_dir = tmp_path_factory.mktemp("upstream") / "run"
    nhr.mine(small(), run_dir, preflight=False)
    return run_dir


def redo_on_ray(upstream: Path, run_dir: Path, config: dict):
    shutil.copytree(upstream, run_dir)
    return nhr.mine(config, run_dir, redo_from="validate", preflight=False, executor="ray")


def config_with(server: FakeApiServer, role: str, model: str, **fields) -> dict:
    """`small()` with `role` served by the fake server through the openai backend (a
    base_url needs no key), with its scaling and limits in `fields`."""
    data = small()
    limits = {"backoff_s": 0.01, "max_backoff_s": 0.02, **fields.pop("limits", {})}
    data["models"][role] = {
        "backend": "openai",
        "model": model,
        "base_url": server.openai_url,
        "limits": limits,
        "cpus": 0.25,
        **fields,
    }
    return data


def test_replicas_share_one_concurrency_limit(ray_cluster, upstream, tmp_path):
    """Two validator replicas, max_concurrency 2: never more than 2 requests in flight at the
    server (each replica alone would send 2, so separate limits would let 4 through)."""
    with FakeApiServer(latency_s=0.05) as server:
        config = config_with(
            server, "validator", "sim-validator", replicas=2, limits={"max_concurrency": 2}
        )
        result = redo_on_ray(upstream, tmp_path / "run", config)
    assert result.stats["dataset"]["rows"] > 0
    assert server.total_requests > 50
    assert server.max_in_flight == 2  # reached, never passed
    [slots] = result.details["api_slots"].values()
    assert slots["peak"] <= 2 and slots["granted"] == server.total_requests


@ray.remote(num_cpus=0.25)
class Replica:
    """A replica of the inverter role as the executor builds one (a RoleWorker), asked to
    chat directly."""

    def __init__(self, config: dict, root: str, coordinator: str) -> None:
        from nhr.config import NhrConfig
        from nhr.executors.ray import RoleWorker

        self.worker = RoleWorker(NhrConfig.model_validate(config), root, coordinator)

    def chat(self, name: str, count: int) -> int:
        from nhr.backends.base import ChatMessage, TextRequest

        backend = self.worker.backends.get("inverter")
        requests = [
            TextRequest((ChatMessage("user", f"say {name} {index}"),), max_tokens=16)
            for index in range(count)
        ]
        return sum(isinstance(answer, str) for answer in backend.chat(requests))


def test_replicas_share_one_request_rate(ray_cluster, tmp_path):
    """Two replicas send 40 requests each at once under requests_per_minute 1200 (20 a second,
    a burst of one second's worth): the server gets at most 20 + 20 in the first second, where
    separate limits would let all 80 through. Slowness can only lower the count."""
    from nhr.config import NhrConfig
    from nhr.executors.ray import NAMESPACE, Coordinator, shared_limit_scopes

    with FakeApiServer() as server:
        data = config_with(server, "inverter", "sim-llm", limits={"requests_per_minute": 1200})
        data["run"]["request_cache"] = "off"
        config = NhrConfig.model_validate(data)
        coordinator = (
            ray.remote(Coordinator)
            .options(name="test-coordinator", namespace=NAMESPACE, num_cpus=0)
            .remote(config.retry.stop_after_failures, shared_limit_scopes(config))
        )
        root = str(tmp_path / "run")
        replicas = [Replica.remote(data, root, "test-coordinator") for _ in range(2)]
        answered = ray.get([r.chat.remote(f"r{i}", 40) for i, r in enumerate(replicas)])
        arrivals = sorted(when for when, _ in server.arrivals)
        for actor in [*replicas, coordinator]:
            ray.kill(actor)
    assert answered == [40, 40]
    assert len(arrivals) == 80
    first_second = sum(1 for when in arrivals if when < arrivals[0] + 1.0)
    assert first_second <= 20 + 20 + 8  # 8: the first request's own way to the server


def test_one_failure_watch_across_replicas(ray_cluster, upstream, tmp_path):
    """Three validator replicas against a server that refuses every request: the stage stops
    after the first 10 failed items of all replicas together (stop_after_failures: 10), not
    after 10 per replica, and keeps no validate marker."""
    with FakeApiServer(fault_rates={"400": 1.0}) as server:
        config = config_with(
            server, "validator", "sim-validator", replicas=3, limits={"max_concurrency": 2}
        )
        config["retry"]["stop_after_failures"] = 10
        config["validate"] = {**config.get("validate", {}), "batch_size": 2}
        with pytest.raises(BrokenBackendError) as caught:
            redo_on_ray(upstream, tmp_path / "run", config)
    assert caught.value.stage == "validate" and caught.value.reason == "bad_request"
    assert "the first 10 items sent to the validator model" in str(caught.value)
    # each replica finishes at most the batch it has in flight (2 items) once the watch decided
    assert 10 <= server.total_requests <= 10 + 3 * 2
    assert not list((tmp_path / "run" / "stages" / "validate").glob("*.done.json"))


def test_a_slot_a_dead_replica_held_comes_back_after_its_lease(monkeypatch):
    """A replica that dies holding a slot never gives it back: the slot is reclaimed once it
    outlived its request's timeout (plus a margin), and the late release of a reclaimed slot
    frees nothing twice."""
    import asyncio

    from nhr.backends.configs import ApiLimits
    from nhr.executors import ray as ray_executor

    monkeypatch.setattr(ray_executor, "SLOT_LEASE_MARGIN_S", 0.05)

    async def scenario() -> None:
        limits = ray_executor._SharedLimits(ApiLimits(max_concurrency=1, timeout_s=0.05))
        lost = await limits.acquire(1)  # its replica dies: no release
        started = asyncio.get_running_loop().time()
        second = await asyncio.wait_for(limits.acquire(1), timeout=5)
        assert asyncio.get_running_loop().time() - started >= 0.05
        limits.release(lost, 0.0)  # late: already reclaimed, must not free `second`'s slot
        assert list(limits.held) == [second]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(limits.acquire(1), timeout=0.02)

    asyncio.run(scenario())
