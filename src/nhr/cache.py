"""A request cache, so a killed run never pays twice for the same model call.

Answers are stored per request under RUN/cache/, keyed by a digest of the model's identity
(backend, model, parameters) and the whole request (images included). When a shard is redone
after a crash, or a stage is recomputed with `--redo-from` and a new threshold, every request
already answered is served from disk. Only answers are cached, never errors. Image answers are
kept once, in the run's image store; the cache holds their digests.

Because a request carries its seed, a cached answer is exactly what the model would be asked
for again; to draw new samples, change the run seed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nhr.backends.base import BackendError
from nhr.store import ImageStore, atomic_write_bytes


class CachedBackend:
    """Wraps a backend; same methods, answers served from RUN/cache when known."""

    def __init__(self, backend: Any, root: Path, images: ImageStore) -> None:
        self.backend = backend
        self.root = root
        self.images = images
        info = backend.info()
        self._identity = json.dumps(
            {"backend": info.backend, "model": info.model, "params": info.params},
            sort_keys=True,
            default=str,
        ).encode("utf-8")
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
        digest = hashlib.sha256(self._identity)
        digest.update(method.encode("utf-8"))
        digest.update(pickle.dumps(request, protocol=4))
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _load(self, key: str) -> Any:
        path = self._path(key)
        if not path.exists():
            return None
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry["type"] == "image":
            image = self.images.path(entry["value"])
            return image.read_bytes() if image.exists() else None
        return entry["value"]

    def _save(self, key: str, answer: Any) -> None:
        if isinstance(answer, bytes):
            entry = {"type": "image", "value": self.images.put(answer)}
        elif isinstance(answer, str):
            entry = {"type": "text", "value": answer}
        else:
            return
        atomic_write_bytes(self._path(key), json.dumps(entry).encode("utf-8"))

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
