"""A request cache, so a killed run never pays twice for the same model call.

Answers are stored per request under RUN/cache/, keyed by a digest of the model's identity
(backend, model, parameters) and the whole request (images included). When a shard is redone
after a crash, or a stage is recomputed with `--redo-from` and a new threshold, every request
already answered is served from disk. Only answers are cached, never errors. Image answers are
kept once, in the run's image store; the cache holds their digests.

Because a request carries its seed, a cached answer is exactly what the model would be asked
for again; to draw new samples, change the run seed.

The key is the SHA-256 (hex) of one canonical JSON document (UTF-8, keys sorted, no spaces,
non-ASCII kept as is):

    {"backend": info.backend, "model": info.model, "params": info.params,
     "method": "chat" | "ask" | "generate" | "edit", "version": CACHE_VERSION,
     "request": {"type": "TextRequest", "fields": [[name, value], ...]}}

`fields` lists the request dataclass's fields in declaration order; inside values, bytes
(images) become {"sha256": hex digest}, tuples and lists JSON arrays, nested dataclasses
{"type": name, "fields": [...]} again, floats JSON numbers in their shortest round-trip form
(Python's `repr`; a float with an integral value as that integer, since 0 and 0.0 make equal
requests), and None null. `params` values of other types are written as their `str`. The same
request built anywhere, in any process, gets the same key. A change of this format bumps
CACHE_VERSION: old entries are then simply not found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from nhr.backends.base import BackendError
from nhr.storage import Storage
from nhr.store import DamagedImageError, ImageStore

CACHE_VERSION = 2  # 1: keys over pickled requests


def _canonical(value: Any, strict: bool = True) -> Any:
    """A JSON-ready form of a request value that depends only on its content."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "type": type(value).__name__,
            "fields": [
                [f.name, _canonical(getattr(value, f.name), strict)]
                for f in dataclasses.fields(value)
            ],
        }
    if isinstance(value, (bytes, bytearray)):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, (tuple, list)):
        return [_canonical(item, strict) for item in value]
    if isinstance(value, dict):
        return {str(key): _canonical(item, strict) for key, item in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value  # json writes floats with repr: the shortest form that round-trips
    if not strict:
        return str(value)
    # a type without a canonical form could make two different requests share a key
    raise TypeError(f"no canonical form for {type(value).__name__} in a model request")


def request_key(identity: dict[str, Any], method: str, request: Any) -> str:
    """The cache key of one request (format in the module docstring)."""
    document = {
        **identity,
        "method": method,
        "version": CACHE_VERSION,
        "request": _canonical(request),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CachedBackend:
    """Wraps a backend; same methods, answers served from RUN/cache when known."""

    def __init__(
        self, backend: Any, storage: Storage, images: ImageStore, folder: str = "cache"
    ) -> None:
        self.backend = backend
        self.storage = storage
        self.folder = folder
        self.images = images
        info = backend.info()
        self._identity = {
            "backend": info.backend,
            "model": info.model,
            "params": _canonical(dict(info.params), strict=False),
        }
        self.hits = 0

    def info(self):
        return self.backend.info()

    def usage(self) -> dict[str, float]:
        usage = dict(self.backend.usage()) if hasattr(self.backend, "usage") else {}
        usage["cache_hits"] = float(self.hits)
        return usage

    def chat(self, requests: Sequence[Any]) -> list[Any]:
        return self._cached("chat", requests, self.backend.chat)

    def ask(self, requests: Sequence[Any]) -> list[Any]:
        return self._cached("ask", requests, self.backend.ask)

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        return self._cached("generate", requests, self.backend.generate)

    def edit(self, requests: Sequence[Any]) -> list[Any]:
        return self._cached("edit", requests, self.backend.edit)

    def _key(self, method: str, request: Any) -> str:
        return request_key(self._identity, method, request)

    def _file(self, key: str) -> str:
        return f"{self.folder}/{key[:2]}/{key}.json"

    def _load(self, key: str) -> Any:
        try:
            entry = json.loads(self.storage.read_bytes(self._file(key)).decode("utf-8"))
            if entry["type"] == "image":
                return self.images.get(entry["value"])
            return entry["value"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, DamagedImageError):
            return None  # a damaged entry or image is a miss: the model is asked again

    def _save(self, key: str, answer: Any) -> None:
        if isinstance(answer, bytes):
            entry = {"type": "image", "value": self.images.put(answer)}
        elif isinstance(answer, str):
            entry = {"type": "text", "value": answer}
        else:
            return
        self.storage.write_bytes(self._file(key), json.dumps(entry).encode("utf-8"))

    def _cached(self, method: str, requests: Sequence[Any], call: Callable) -> list[Any]:
        keys = [self._key(method, request) for request in requests]
        answers = [self._load(key) for key in keys]
        missing = [i for i, answer in enumerate(answers) if answer is None]
        self.hits += len(requests) - len(missing)
        if missing:
            fresh = call([requests[i] for i in missing])
            for i, answer in zip(missing, fresh):
                if not isinstance(answer, BackendError):
                    self._save(keys[i], answer)
                answers[i] = answer
        return answers
