"""Out of GPU memory in the transformers backend: a batch that does not fit is split in halves,
later calls start from the smaller size, and what still does not fit is an item failure.

The out-of-memory error is faked on CPU: a patched `generate` raises
`torch.cuda.OutOfMemoryError` for batches larger than `fits`, as CUDA would."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from nhr.backends.base import PermanentBackendError, TransientBackendError, VisionRequest
from nhr.backends.configs import TransformersBackendConfig
from nhr.backends.transformers import TransformersBackend

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tiny_transformers import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm-oom") / "vlm")


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def vlm_that_fits(folder, monkeypatch, fits: int) -> tuple[TransformersBackend, list[int]]:
    """A backend whose `generate` raises CUDA's OutOfMemoryError for batches over `fits`; the
    list records the batch size of every call."""
    import torch

    backend = TransformersBackend(
        TransformersBackendConfig(backend="transformers", model=str(folder), device="cpu")
    )
    backend.ask([request(0)])  # loads the model
    model = backend._vision.model
    real_generate = model.generate
    calls: list[int] = []

    def generate(**kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if calls[-1] > fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4 GiB")
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return backend, calls


def request(number: int) -> VisionRequest:
    images = (png((number * 40 % 256, 90, 20)), png((10, number * 70 % 256, 200)))
    return VisionRequest(images=images, prompt=f"Same scene? ({number})", max_tokens=3)


def test_a_batch_that_runs_out_of_memory_is_split_and_later_calls_start_smaller(
    folder, monkeypatch
):
    whole, _ = vlm_that_fits(folder, monkeypatch, fits=8)
    expected = whole.ask([request(n) for n in range(6)])
    backend, calls = vlm_that_fits(folder, monkeypatch, fits=2)
    answers = backend.ask([request(n) for n in range(6)])
    assert answers == expected
    assert calls == [6, 3, 2, 1, 2, 1]  # 6 -> 3 + 3 -> (2 + 1) + (2 + 1)
    assert backend.batch_limit == 2

    calls.clear()
    backend.ask([request(n) for n in range(5)])
    assert calls == [2, 2, 1]  # no failed attempt: the limit is remembered


def test_a_request_that_never_fits_is_a_failure_and_the_run_goes_on(folder, monkeypatch):
    backend, calls = vlm_that_fits(folder, monkeypatch, fits=0)
    broken = VisionRequest(images=(b"not a png",), prompt="?")
    answers = backend.ask([request(0), broken, request(1)])
    assert calls == [2, 1, 1]
    assert isinstance(answers[1], PermanentBackendError) and answers[1].reason == "bad_image"
    for answer in (answers[0], answers[2]):
        assert isinstance(answer, TransientBackendError) and answer.retryable
        assert answer.detail.startswith("out of memory")
    assert backend.batch_limit == 1
