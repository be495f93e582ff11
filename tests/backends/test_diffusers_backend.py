"""The diffusers backend on tiny random Flux / Flux Kontext pipelines, offline on CPU."""

# ruff: noqa: E402 (the imports below need torch and diffusers, skipped without them)

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch
from PIL import Image
from tiny_diffusers import (
    build_tiny_flux,
    build_tiny_flux_kontext,
    build_tiny_flux_lora,
)

import nhr
from helpers import table_rows
from nhr.backends import create_backend
from nhr.backends.base import (
    BackendSetupError,
    EditRequest,
    GenerateRequest,
    ImageEditor,
    ImageGenerator,
    MissingExtraError,
    PermanentBackendError,
    TransientBackendError,
)
from nhr.backends.configs import DiffusersBackendConfig, LoraAdapter
from nhr.backends.diffusers import (
    PIPELINES,
    DiffusersBackend,
    check_image,
    dtype_keyword,
    family_arguments,
)
from nhr.config import parse_config
from nhr.pipeline import stage_names
from nhr.store import ImageStore


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-diffusers")
    return {
        "flux": build_tiny_flux(root / "flux"),
        "kontext": build_tiny_flux_kontext(root / "kontext"),
        "lora": build_tiny_flux_lora(root / "lora"),
    }


def make_config(folder, **fields) -> DiffusersBackendConfig:
    values = dict(backend="diffusers", model=str(folder), device="cpu", dtype="float32", steps=2)
    return DiffusersBackendConfig(**{**values, **fields})


@pytest.fixture(scope="module")
def generator(folders):
    return DiffusersBackend(make_config(folders["flux"]))


@pytest.fixture(scope="module")
def editor(folders):
    return DiffusersBackend(make_config(folders["kontext"]))


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def transformer_hook(backend, hook):
    """Run `hook(batch_size)` before every transformer step of `backend`'s pipeline."""
    handle = backend.pipeline.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: hook(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        yield
    finally:
        handle.remove()


# -- generate ---------------------------------------------------------------------------


def test_generate_batches_by_size_and_returns_exact_sizes(generator):
    requests = [
        GenerateRequest("a red cat", 64, 48, seed=1),
        GenerateRequest("a blue dog", 48, 64, seed=2),
        GenerateRequest("a green car", 64, 48, seed=3),
        GenerateRequest("an odd size", 50, 30, seed=4),  # not a multiple of 16: resized back
    ]
    batch_sizes: list[int] = []
    with transformer_hook(generator, batch_sizes.append):
        results = generator.generate(requests)
    assert all(isinstance(r, bytes) for r in results), results
    assert [size_of(r) for r in results] == [(64, 48), (48, 64), (64, 48), (50, 30)]
    # three pipeline calls (two steps each): the two 64x48 rows together, then one per size
    assert batch_sizes == [2, 2, 1, 1, 1, 1]


def test_seeds_decide_the_image(generator):
    same = [GenerateRequest("a red cat", 64, 48, seed=7)] * 2
    first, second = generator.generate(same)
    (again,) = generator.generate(same[:1])
    other = generator.generate([GenerateRequest("a red cat", 64, 48, seed=8)])[0]
    assert first == second == again
    assert other != first
    # a row's image does not depend on its batch mates (up to float rounding)
    mixed = generator.generate([GenerateRequest("a blue dog", 64, 48, seed=9), same[0]])[1]
    assert np.abs(pixels(mixed) - pixels(first)).max() <= 2


def test_protocols_and_info(generator, folders):
    assert isinstance(generator, ImageGenerator) and isinstance(generator, ImageEditor)
    info = generator.info()
    assert info.backend == "diffusers"
    assert info.model == str(folders["flux"])
    assert info.params == {
        "pipeline": "FluxPipeline",
        "revision": None,
        "dtype": "float32",
        "steps": 2,
        "guidance": None,
        "loras": [],
        "device": "cpu",
        "cpu_offload": "none",
        "call_kwargs": {},
    }
    json.dumps(info.params)  # recorded into rows as JSON


def test_create_backend_and_lazy_load(folders):
    backend = create_backend(make_config(folders["flux"]))
    assert isinstance(backend, DiffusersBackend)
    assert backend._pipeline is None  # nothing loads before the first call
    assert backend.info().params["pipeline"] == "FluxPipeline"  # read from model_index.json
    assert backend._pipeline is None


def test_lora_changes_the_output_and_is_reported(generator, folders):
    lora = LoraAdapter(path=str(folders["lora"]), weight=0.7)
    backend = DiffusersBackend(make_config(folders["flux"], loras=[lora]))
    request = [GenerateRequest("a red cat", 64, 48, seed=7)]
    with_lora = backend.generate(request)[0]
    assert isinstance(with_lora, bytes) and with_lora != generator.generate(request)[0]
    assert backend.pipeline.get_active_adapters() == ["lora_0"]
    [reported] = backend.info().params["loras"]
    assert {k: reported[k] for k in ("path", "weight", "weight_name")} == {
        "path": str(folders["lora"]),
        "weight": 0.7,
        "weight_name": None,
    }
    assert len(reported["digest"]) == 64  # the weights' content: see the next test


def test_a_lora_retrained_into_the_same_folder_is_another_model_to_the_cache(tmp_path, folders):
    """The request cache keys on the backend's identity: retrained weights in the same folder
    must change it, or a bench (or a run) would serve the old LoRA's edits."""
    import shutil

    from nhr.backends.diffusers import weights_digest

    lora = tmp_path / "lora"
    shutil.copytree(folders["lora"], lora)
    config = make_config(folders["flux"], loras=[LoraAdapter(path=str(lora))])
    before = DiffusersBackend(config).info().params
    weights = sorted(lora.glob("*.safetensors"))[0]
    changed = bytearray(weights.read_bytes())
    changed[-1] ^= 0xFF
    weights.write_bytes(bytes(changed))  # other weights, same path
    after = DiffusersBackend(config).info().params
    assert before["loras"][0]["digest"] != after["loras"][0]["digest"]
    assert weights_digest("some-org/some-hub-lora") is None  # a hub id is known by its name
    # a folder without the named weights: no identity error here, the load reports it
    assert weights_digest(str(lora), "missing.safetensors") is None
    (tmp_path / "empty").mkdir()
    assert weights_digest(str(tmp_path / "empty")) is None


# -- edit -------------------------------------------------------------------------------


def test_edit_returns_the_input_size(editor):
    requests = [
        EditRequest(noise_png(64, 48, 0), "make it blue", seed=1),
        EditRequest(noise_png(40, 56, 1), "remove the cat", seed=2),
        EditRequest(noise_png(64, 48, 2), "add a hat", seed=3),
        EditRequest(noise_png(50, 34, 3), "odd size", seed=4),
        EditRequest(b"not an image", "broken input", seed=5),
    ]
    batch_sizes: list[int] = []
    with transformer_hook(editor, batch_sizes.append):
        results = editor.edit(requests)
    assert [size_of(r) for r in results[:4]] == [(64, 48), (40, 56), (64, 48), (50, 34)]
    assert isinstance(results[4], PermanentBackendError) and results[4].reason == "bad_input"
    assert batch_sizes == [2, 2, 1, 1, 1, 1]
    again = editor.edit(requests[:1])[0]
    assert again == results[0]
    assert editor.info().params["pipeline"] == "FluxKontextPipeline"


def test_explicit_pipeline_overrides_model_index(folders):
    # the text-to-image folder loaded as Kontext: the same components edit
    backend = DiffusersBackend(make_config(folders["flux"], pipeline="FluxKontextPipeline"))
    assert backend.info().params["pipeline"] == "FluxKontextPipeline"
    (result,) = backend.edit([EditRequest(noise_png(48, 32), "make it red", seed=0)])
    assert size_of(result) == (48, 32)
    assert type(backend.pipeline).__name__ == "FluxKontextPipeline"


def test_unsupported_task_gives_item_errors(generator, folders):
    editor = DiffusersBackend(make_config(folders["kontext"]))
    refused = editor.generate([GenerateRequest("a cat", 64, 48, 0)] * 2)
    assert [r.reason for r in refused] == ["unsupported"] * 2
    assert all(isinstance(r, PermanentBackendError) for r in refused)
    assert "FluxKontextPipeline" in refused[0].detail
    assert editor._pipeline is None  # refused from model_index.json, without loading weights
    refused = generator.edit([EditRequest(noise_png(32, 32), "make it blue", 0)])
    assert isinstance(refused[0], PermanentBackendError) and refused[0].reason == "unsupported"


# -- dtype ------------------------------------------------------------------------------


def test_bfloat16_is_loaded_as_asked(folders):
    backend = DiffusersBackend(make_config(folders["flux"], dtype="bfloat16"))
    assert backend.pipeline.transformer.dtype == torch.bfloat16
    assert backend.pipeline.vae.dtype == torch.bfloat16
    assert backend.info().params["dtype"] == "bfloat16"


@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")
def test_dtype_reaches_a_diffusers_that_reads_only_torch_dtype(folders, monkeypatch):
    """diffusers 0.35 reads only `torch_dtype` and ignores an unknown `dtype` keyword, which
    loaded FLUX in float32 on such installs."""
    import diffusers

    real = diffusers.FluxPipeline.from_pretrained
    seen = {}

    def from_pretrained(path, **kwargs):  # 0.35's behaviour: unknown keywords are ignored
        torch_dtype = kwargs.pop("torch_dtype", None)
        seen.update(kwargs, torch_dtype=torch_dtype)
        return real(path, revision=kwargs.get("revision"), torch_dtype=torch_dtype)

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", staticmethod(from_pretrained))
    backend = DiffusersBackend(make_config(folders["flux"], dtype="bfloat16"))
    assert backend.pipeline.transformer.dtype == torch.bfloat16
    assert seen["torch_dtype"] == torch.bfloat16 and "dtype" not in seen


def test_dtype_keyword_follows_the_installed_signature():
    def reads_dtype(path, **kwargs):
        dtype = kwargs.pop("dtype", None)
        return dtype

    def reads_torch_dtype(path, **kwargs):
        return kwargs.pop("torch_dtype", None)

    def explicit(path, dtype=None): ...

    assert dtype_keyword(reads_dtype) == "dtype"
    assert dtype_keyword(reads_torch_dtype) == "torch_dtype"
    assert dtype_keyword(explicit) == "dtype"


# -- pipeline choice --------------------------------------------------------------------


def test_unknown_pipeline_name_is_refused(folders):
    with pytest.raises(BackendSetupError, match="FluxKontextPipeline") as error:
        DiffusersBackend(make_config(folders["flux"], pipeline="NoSuchPipeline"))
    assert "NoSuchPipeline" in str(error.value)
    for name in (
        "FluxPipeline",
        "QwenImagePipeline",
        "QwenImageEditPipeline",
        "QwenImageEditPlusPipeline",
        "StableDiffusion3Pipeline",
        "StableDiffusionXLPipeline",
        "StableDiffusionInstructPix2PixPipeline",
    ):
        assert name in PIPELINES


def test_models_that_cannot_load_stop_the_run(tmp_path, folders):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "MysteryPipeline"}))
    backend = DiffusersBackend(make_config(tmp_path))
    with pytest.raises(BackendSetupError, match="MysteryPipeline.*FluxPipeline"):
        backend.generate([GenerateRequest("a cat", 32, 32, 0)] * 2)
    missing = DiffusersBackend(make_config(tmp_path / "nowhere"))
    assert missing.info().params["pipeline"] is None  # info() never raises
    with pytest.raises(BackendSetupError, match="nowhere"):
        missing.edit([EditRequest(noise_png(32, 32), "x", 0)])
    lora = LoraAdapter(path=str(tmp_path / "no-lora"))
    broken = DiffusersBackend(make_config(folders["flux"], loras=[lora]))
    with pytest.raises(BackendSetupError, match="no-lora"):
        broken.generate([GenerateRequest("a cat", 32, 32, 0)])


def test_family_arguments():
    kontext = family_arguments("FluxKontextPipeline", 64, 48, 2, 2.5)
    assert kontext == {
        "width": 64,
        "height": 48,
        "guidance_scale": 2.5,
        "max_area": 64 * 48,
        "_auto_resize": False,
    }
    assert family_arguments("FluxPipeline", 64, 48, 2, None) == {"width": 64, "height": 48}
    qwen = family_arguments("QwenImageEditPipeline", 64, 48, 2, None)
    assert qwen["true_cfg_scale"] == 4.0 and qwen["negative_prompt"] == [" ", " "]
    assert "negative_prompt" not in family_arguments("QwenImagePipeline", 64, 48, 1, 1.0)
    pix2pix = family_arguments("StableDiffusionInstructPix2PixPipeline", 64, 48, 1, 7.0)
    assert pix2pix == {"guidance_scale": 7.0, "image_guidance_scale": 1.5}


# -- failures ---------------------------------------------------------------------------


def test_check_image():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3), dtype=np.float32)
    assert check_image(image) is None
    assert check_image(np.where(image > 0.5, np.nan, image)) == "nan_output"
    assert check_image(np.full((16, 16, 3), np.inf, dtype=np.float32)) == "nan_output"
    assert check_image(np.zeros((16, 16, 3), dtype=np.float32)) == "safety"
    gray = np.full((16, 16, 3), 0.5, dtype=np.float32)
    assert check_image(gray) == "blank_output"
    assert check_image(gray + rng.normal(0, 0.002, gray.shape).astype(np.float32)) == (
        "blank_output"
    )
    assert check_image(np.ones((16, 16, 3), dtype=np.float32)) == "blank_output"


@pytest.mark.parametrize(
    ("decoded", "reason"),
    [(float("nan"), "nan_output"), (-1.0, "safety"), (0.2, "blank_output")],
)
def test_bad_outputs_become_item_errors(folders, decoded, reason):
    backend = DiffusersBackend(make_config(folders["flux"]))
    decoder = backend.pipeline.vae.decoder
    handle = decoder.register_forward_hook(lambda module, args, out: torch.full_like(out, decoded))
    try:
        results = backend.generate([GenerateRequest("a cat", 32, 32, s) for s in (0, 1)])
    finally:
        handle.remove()
    assert all(isinstance(r, PermanentBackendError) for r in results)
    assert [r.reason for r in results] == [reason, reason]


def test_batch_oom_is_retried_item_by_item(generator):
    requests = [GenerateRequest("a cat", 64, 48, s) for s in (11, 12)]
    expected = generator.generate(requests)

    def fail_batches(batch_size):
        if batch_size > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")

    with transformer_hook(generator, fail_batches):
        results = generator.generate(requests)
    assert all(isinstance(r, bytes) for r in results)
    for got, want in zip(results, expected):
        assert np.abs(pixels(got) - pixels(want)).max() <= 2


def test_exceptions_become_item_errors(generator):
    requests = [GenerateRequest("a cat", 64, 48, s) for s in (1, 2, 3)]

    def out_of_memory(batch_size):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with transformer_hook(generator, out_of_memory):
        results = generator.generate(requests)
    assert all(isinstance(r, TransientBackendError) for r in results)
    assert {r.reason for r in results} == {"exception"}
    assert "OutOfMemoryError" in results[0].detail

    def broken(batch_size):
        raise ValueError("shapes do not match")

    with transformer_hook(generator, broken):
        results = generator.generate(requests)
    assert all(isinstance(r, PermanentBackendError) for r in results)
    assert results[0].reason == "exception"
    assert results[0].detail == "ValueError: shapes do not match"
    # the backend still works afterwards
    assert isinstance(generator.generate(requests[:1])[0], bytes)


# -- packaging --------------------------------------------------------------------------


def test_import_nhr_does_not_import_torch():
    code = (
        "import sys, nhr, nhr.backends, nhr.config; "
        "heavy = [m for m in ('torch', 'diffusers', 'nhr.backends.diffusers') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_names_the_install_command(monkeypatch):
    import importlib

    monkeypatch.delitem(sys.modules, "nhr.backends.diffusers")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now fails
    with pytest.raises(MissingExtraError, match=r"pip install 'nhr\[diffusers\]'"):
        importlib.import_module("nhr.backends.diffusers")


# -- a whole run ------------------------------------------------------------------------


def test_mine_with_diffusers_generator_and_editor(folders, small_config, tmp_path):
    buckets = [[64, 48], [48, 64]]
    data = small_config(
        run={"prompts": 2},
        generate={"images_per_prompt": 1, "buckets": buckets},
        schedule={"seeds_per_pair": 1},
        # sources are noise, so the simulated gate might reject them all and the editor
        # would never run
        plausibility={"enabled": False},
    )
    data["models"]["generator"] = make_config(folders["flux"]).model_dump()
    data["models"]["editor"] = make_config(folders["kontext"]).model_dump()
    run_dir = tmp_path / "run"
    result = nhr.mine(data, run_dir)

    assert result.stats["complete"] is True
    images = ImageStore(run_dir / "images")
    generated = table_rows(run_dir, "generate")
    assert len(generated) == 2
    for row in generated:
        if row["status"] == "ok":
            assert [row["width"], row["height"]] in buckets
            assert size_of(images.get(row["image"])) == (row["width"], row["height"])
        else:
            assert row["reason"]
    assert any(row["status"] == "ok" for row in generated)
    assert json.loads(generated[0]["model"])["params"]["pipeline"] == "FluxPipeline"

    edited = table_rows(run_dir, "edit")
    assert edited
    for row in edited:
        if row["status"] == "ok":
            assert size_of(images.get(row["edited_image"])) == (row["width"], row["height"])
        else:
            assert row["reason"]
    assert any(row["status"] == "ok" for row in edited)
    assert json.loads(edited[0]["model"])["params"]["pipeline"] == "FluxKontextPipeline"

    stats = json.loads((run_dir / "report" / "stats.json").read_text())
    listed = [stage["stage"] for stage in stats["stages"]]
    assert listed == list(stage_names(parse_config(data)))
    assert all(stage["shards_done"] == stage["shards_total"] for stage in stats["stages"])
