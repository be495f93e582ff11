"""Throughput of the API machinery: how close does a batch get to the concurrency limit allows?

The fake API server (tests/backends/fake_api_server.py) answers every request after a fixed
latency; with `max_concurrency` requests in flight the best possible rate is
max_concurrency / latency. We send vision requests (two small PNGs each, like the judges) through
`OpenAIBackend.ask` and print the achieved rate as a share of that maximum (goal: >= 0.9).

The server runs in a child process so it does not share the client's interpreter lock, as a
real server would not.

    python benchmarks/api_throughput.py [--requests 640] [--concurrency 32] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends"))

KEY_ENV = "NHR_BENCH_API_KEY"


def _serve(latency_s: float, ready: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    from fake_api_server import FakeApiServer

    with FakeApiServer(latency_s=latency_s) as server:
        ready.put(server.url)
        stop.wait()
        ready.put(server.max_in_flight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()

    from nhr.backends.base import GenerateRequest, VisionRequest
    from nhr.backends.configs import OpenAIBackendConfig
    from nhr.backends.openai import OpenAIBackend
    from nhr.backends.sim import SimBackend, SimBackendConfig

    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    server = context.Process(target=_serve, args=(args.latency, ready, stop), daemon=True)
    server.start()
    url = ready.get(timeout=60)

    sim = SimBackend(SimBackendConfig(scale=1.0))
    prompt = "A photo of a red apple and a blue cup on a wooden table"
    before, after = sim.generate([GenerateRequest(prompt, 128, 96, s) for s in (1, 2)])
    os.environ[KEY_ENV] = "bench-key"
    backend = OpenAIBackend(
        OpenAIBackendConfig(
            backend="openai",
            model="sim-vlm",
            base_url=f"{url}/v1",
            api_key_env=KEY_ENV,
            limits={"max_concurrency": args.concurrency, "max_retries": 0, "timeout_s": 30},
        )
    )
    requests = [
        VisionRequest(
            images=(before, after),
            prompt=f"Instruction: remove the apple\nRate InstructionAdherence (request {i}).",
            max_tokens=64,
        )
        for i in range(args.requests)
    ]
    backend.ask(requests[: args.concurrency])  # warm up: connections, imports

    started = time.perf_counter()
    answers = backend.ask(requests)
    elapsed = time.perf_counter() - started
    backend.close()
    stop.set()
    max_in_flight = ready.get(timeout=30)
    server.join(timeout=30)

    failed = sum(1 for a in answers if not isinstance(a, str))
    achieved = len(requests) / elapsed
    ideal = args.concurrency / args.latency
    print(f"requests         {len(requests)} ({failed} failed)")
    print(f"elapsed          {elapsed:.2f} s (ideal {len(requests) / ideal:.2f} s)")
    print(f"max in flight    {max_in_flight} (limit {args.concurrency})")
    print(f"throughput       {achieved:.1f} req/s of {ideal:.1f} req/s")
    print(f"ratio            {achieved / ideal:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
