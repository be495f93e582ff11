"""What object storage costs: S3 requests and bytes per released triplet.

    python benchmarks/storage.py [--prompts N]

Mines the quickstart into a local S3 server (moto, in this process, behind a counting WSGI
layer) with the local executor, then prints the requests by method, the bytes sent and
received, and the bytes the run keeps, each per released triplet. Needs `pip install -e
".[dev]"` (s3fs and moto). Real S3 bills per request (PUT/LIST about 10x GET), so these
figures say what a run of a given size costs on top of compute.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter

from _common import quickstart


class CountingApp:
    """WSGI middleware counting requests by method and the bytes in and out."""

    def __init__(self, app) -> None:
        self.app = app
        self.requests: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        query = environ.get("QUERY_STRING", "")
        kind = "LIST" if method == "GET" and "list-type" in query else method
        with self.lock:
            self.requests[kind] += 1
            self.bytes_in += int(environ.get("CONTENT_LENGTH") or 0)
        for chunk in self.app(environ, start_response):
            with self.lock:
                self.bytes_out += len(chunk)
            yield chunk


def start_server() -> tuple[CountingApp, str]:
    import logging

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a log line per request otherwise
    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return app, f"http://127.0.0.1:{server.port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="default: the quickstart's")
    args = parser.parse_args()

    app, endpoint = start_server()
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="benchmark",
        AWS_SECRET_ACCESS_KEY="benchmark",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import s3fs

    import nhr
    from nhr.store import RunStore

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("bench")
    config = quickstart()
    if args.prompts:
        config["run"]["prompts"] = args.prompts
    app.requests.clear()
    app.bytes_in = app.bytes_out = 0
    started = time.perf_counter()
    result = nhr.mine(config, "s3://bench/run")
    seconds = time.perf_counter() - started
    triplets = result.stats["dataset"]["rows"]
    storage = RunStore("s3://bench/run").storage
    stored = sum(fs.du(storage.base, total=False).values())
    objects = len(fs.find(storage.base))
    total = sum(app.requests.values())
    print(f"run: {config['run']['prompts']} prompts, {triplets} released triplets, {seconds:.1f} s")
    print(f"objects in the run: {objects} ({objects / triplets:.1f} per triplet)")
    for kind, count in sorted(app.requests.items()):
        print(f"  {kind:<7}{count:>8} requests  {count / triplets:>8.1f} per triplet")
    print(f"requests per released triplet: {total / triplets:.1f}")
    print(f"bytes sent per released triplet: {app.bytes_in / triplets / 1e3:.1f} kB")
    print(f"bytes received per released triplet: {app.bytes_out / triplets / 1e3:.1f} kB")
    print(f"bytes stored per released triplet: {stored / triplets / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
