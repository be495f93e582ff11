"""Out of GPU memory in the diffusers backend: a batch that does not fit is split in halves,
later batches of that size start smaller, and what still does not fit is an item failure.

The out-of-memory error is faked on CPU: a patched pipeline call raises
`torch.cuda.OutOfMemoryError` for batches larger than `fits`, as CUDA would."""

# ruff: noqa: E402 (the imports below need torch and diffusers, skipped without them)

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch
from PIL import Image
from tiny_diffusers import build_tiny_flux_kontext

from nhr.backends.base import EditRequest, TransientBackendError
from nhr.backends.configs import DiffusersBackendConfig
from nhr.backends.diffusers import DiffusersBackend


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_flux_kontext(tmp_path_factory.mktemp("kontext-oom") / "kontext")


def png(seed: int, size: int = 32) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def editor_that_fits(folder, fits: int) -> tuple[DiffusersBackend, list[int]]:
    """A backend whose pipeline raises CUDA's OutOfMemoryError for batches over `fits`; the
    list records the batch size of every call."""
    config = DiffusersBackendConfig(
        backend="diffusers", model=str(folder), device="cpu", dtype="float32", steps=1
    )
    backend = DiffusersBackend(config)
    pipeline = backend.pipeline
    real_call = type(pipeline).__call__
    calls: list[int] = []

    class LimitedMemory(type(pipeline)):
        def __call__(self, *args, **kwargs):
            calls.append(len(kwargs["prompt"]))
            if len(kwargs["prompt"]) > fits:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
            return real_call(self, *args, **kwargs)

    pipeline.__class__ = LimitedMemory
    return backend, calls


def requests(count: int, size: int = 32) -> list[EditRequest]:
    return [EditRequest(png(seed, size), "make it blue", seed) for seed in range(count)]


def test_a_batch_that_runs_out_of_memory_is_split_and_later_batches_start_smaller(folder):
    backend, calls = editor_that_fits(folder, fits=2)
    results = backend.edit(requests(8))
    assert all(isinstance(result, bytes) for result in results)
    assert calls == [8, 4, 2, 2, 2, 2]  # halved until it fits, then the rest at that size
    assert backend.batch_limits == {(32, 32): 2}

    calls.clear()
    assert all(isinstance(result, bytes) for result in backend.edit(requests(5)))
    assert calls == [2, 2, 1]  # no failed attempt: the limit is remembered
    calls.clear()
    backend.edit(requests(4, size=48))  # another size has its own limit
    assert calls == [4, 2, 2]


def test_split_batches_give_the_same_images(folder):
    whole, _ = editor_that_fits(folder, fits=8)
    split, calls = editor_that_fits(folder, fits=1)
    expected = whole.edit(requests(3))
    got = split.edit(requests(3))
    assert calls == [3, 2, 1, 1, 1]
    for a, b in zip(got, expected):
        with Image.open(io.BytesIO(a)) as image_a, Image.open(io.BytesIO(b)) as image_b:
            diff = np.abs(np.asarray(image_a, np.int16) - np.asarray(image_b, np.int16))
        assert diff.max() <= 2  # each row's noise comes from its own seed


def test_an_item_that_never_fits_is_a_failure_and_the_run_goes_on(folder):
    backend, calls = editor_that_fits(folder, fits=0)
    results = backend.edit(requests(3))
    assert all(isinstance(result, TransientBackendError) for result in results)
    assert {result.reason for result in results} == {"exception"}
    assert "OutOfMemoryError" in results[0].detail
    assert calls == [3, 2, 1, 1, 1]
    assert backend.batch_limits == {(32, 32): 1}
