"""`nhr train lora` on a tiny random FLUX.1 Kontext pipeline and the session's mined run,
offline on CPU: the loss falls, a checkpoint resumes to the same losses, and the adapter
changes the editor's output through the diffusers backend's `loras:` key."""

# ruff: noqa: E402 (the imports below need torch and diffusers, skipped without them)

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "backends"))
from tiny_diffusers import build_tiny_flux, build_tiny_flux_kontext

from nhr.backends.base import EditRequest
from nhr.backends.configs import DiffusersBackendConfig, LoraAdapter
from nhr.backends.diffusers import DiffusersBackend
from nhr.cli import main
from nhr.exports import export_run
from nhr.train import TrainError, TrainOptions, train_lora
from nhr.train.data import load_triplets
from nhr.train.loop import BatchOrder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models on a shared 2-core machine run ~10x faster without intra-op threads
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def kontext(tmp_path_factory):
    return build_tiny_flux_kontext(tmp_path_factory.mktemp("tiny") / "kontext")


def options(kontext, run_dir, output, **fields) -> TrainOptions:
    values = dict(
        base=str(kontext),
        data=str(run_dir),
        output=str(output),
        steps=30,
        rank=4,
        lr=1e-2,
        batch_size=2,
        resolution=16,
        checkpoint_every=10,
        mixed_precision="no",
        gradient_checkpointing=False,
        device="cpu",
        max_sequence_length=32,
        validation_steps=2,
        validation_count=2,
    )
    return TrainOptions(**{**values, **fields})


@pytest.fixture(scope="module")
def trained(kontext, mined, tmp_path_factory):
    run_dir, _ = mined
    output = tmp_path_factory.mktemp("lora")
    summary = train_lora(options(kontext, run_dir, output, validate_every=15))
    return output, summary


def test_loss_falls_over_30_steps(trained):
    output, summary = trained
    losses = summary["losses"]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
    assert json.loads((output / "nhr-train.json").read_text())["losses"] == losses
    assert (output / "pytorch_lora_weights.safetensors").is_file()


def test_validation_grids_and_checkpoints(trained):
    output, _ = trained
    grids = sorted(p.name for p in (output / "validation").iterdir())
    assert grids == ["step-00000015.png", "step-00000030.png"]
    with Image.open(output / "validation" / grids[0]) as grid:
        assert grid.size == (3 * 16, 2 * 16)  # source | edited | output, two triplets
    kept = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert kept == ["step-00000020", "step-00000030"]  # the older one is removed


def test_resume_continues_to_the_same_losses(kontext, mined, tmp_path, monkeypatch):
    run_dir, _ = mined
    whole = train_lora(options(kontext, run_dir, tmp_path / "whole", steps=6, checkpoint_every=3))
    first = train_lora(options(kontext, run_dir, tmp_path / "cut", steps=3, checkpoint_every=3))
    assert first["losses"] == whole["losses"][:3]
    with pytest.raises(TrainError, match="--resume"):
        train_lora(options(kontext, run_dir, tmp_path / "cut", steps=6, checkpoint_every=3))
    with pytest.raises(TrainError, match="rank"):
        train_lora(options(kontext, run_dir, tmp_path / "cut", steps=6, rank=8, resume=True))
    # the same folders written another way are the same run
    elsewhere = os.path.relpath(run_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    resumed = train_lora(
        options(kontext, elsewhere, tmp_path / "cut", steps=6, checkpoint_every=3, resume=True)
    )
    assert resumed["losses"] == whole["losses"]


def test_adapter_changes_the_editor_through_loras(trained, kontext):
    output, _ = trained
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    request = [EditRequest(buffer.getvalue(), "make it blue", seed=3)]

    def editor(**fields):
        config = DiffusersBackendConfig(
            backend="diffusers",
            model=str(kontext),
            device="cpu",
            dtype="float32",
            steps=2,
            call_kwargs={"max_sequence_length": 32},
            **fields,
        )
        return DiffusersBackend(config)

    base = editor().edit(request)[0]
    tuned_backend = editor(loras=[LoraAdapter(path=str(output))])
    tuned = tuned_backend.edit(request)[0]
    assert isinstance(base, bytes) and isinstance(tuned, bytes)
    assert tuned != base
    assert tuned_backend.pipeline.get_active_adapters() == ["lora_0"]
    # every trained layer loaded, with the trained weights (none silently dropped)
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    loaded = get_peft_model_state_dict(tuned_backend.pipeline.transformer, adapter_name="lora_0")
    trained = load_file(str(output / "checkpoints" / "step-00000030" / "adapter.safetensors"))
    assert set(loaded) == set(trained) and len(trained) > 0
    assert all(torch.equal(loaded[name], trained[name]) for name in trained)


def test_hf_export_gives_the_same_training_triplets(mined, tmp_path):
    run_dir, _ = mined
    export_run(run_dir, "hf", output=tmp_path / "hf")
    from_run, from_export = load_triplets(run_dir), load_triplets(tmp_path / "hf")
    assert len(from_run) == len(from_export) > 0
    ids = [from_run.triplet(h).sample_id for h in from_run.train]
    assert sorted(ids) == sorted(from_export.triplet(h).sample_id for h in from_export.train)
    first = from_export.triplet(from_export.train[0])
    assert first.source.mode == "RGB" and first.instruction


def test_batch_order_covers_every_triplet_each_epoch():
    order = BatchOrder(5, seed=1)
    seen = [order.positions(step, 1)[0] for step in range(10)]
    assert sorted(seen[:5]) == sorted(seen[5:]) == list(range(5))
    assert seen == [BatchOrder(5, seed=1).positions(step, 1)[0] for step in range(10)]


def test_unsupported_model_and_bad_data_are_clear_errors(tmp_path, mined, capsys):
    flux = build_tiny_flux(tmp_path / "flux")  # text to image: not an editor
    run_dir, _ = mined
    code = main(
        [
            "train",
            "lora",
            "--base",
            str(flux),
            "--data",
            str(run_dir),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "FluxPipeline" in capsys.readouterr().err
    with pytest.raises(TrainError, match="neither a run directory"):
        load_triplets(tmp_path)
    with pytest.raises(TrainError, match="multiple of 16"):
        train_lora(TrainOptions(base=str(flux), data=str(run_dir), output="x", resolution=20))


def test_cli_trains_and_prints_the_loras_entry(kontext, mined, tmp_path, capsys):
    run_dir, _ = mined
    code = main(
        [
            "train",
            "lora",
            "--base",
            str(kontext),
            "--data",
            str(run_dir),
            "--output",
            str(tmp_path / "out"),
            "--steps",
            "2",
            "--rank",
            "2",
            "--resolution",
            "16",
            "--mixed-precision",
            "no",
            "--cpu",
            "--max-sequence-length",
            "32",
            "--no-gradient-checkpointing",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"path: {tmp_path / 'out'}" in out
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()


def test_qwen_image_edit_loss_falls_and_its_adapter_loads(mined, tmp_path, monkeypatch):
    """The Qwen-Image-Edit family through the same loop, on a tiny in-memory pipeline (its
    stand-in processor cannot be saved as a model folder, so loading is replaced)."""
    from safetensors.torch import load_file

    from nhr.train import loop
    from nhr.train.families import QwenEditFamily
    from tiny_qwen_edit import tiny_qwen_edit_pipeline

    run_dir, _ = mined
    monkeypatch.setattr(loop, "family_for", lambda model, guidance: QwenEditFamily(guidance))
    monkeypatch.setattr(loop, "_load_pipeline", lambda *_: tiny_qwen_edit_pipeline())
    summary = train_lora(
        options("tiny-qwen-edit", run_dir, tmp_path, resolution=32, checkpoint_every=30)
    )
    losses = summary["losses"]
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
    assert summary["pipeline"] == "QwenImageEditPipeline"

    fresh = tiny_qwen_edit_pipeline()
    fresh.load_lora_weights(str(tmp_path), adapter_name="lora_0")
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(fresh.transformer, adapter_name="lora_0")
    trained = load_file(str(tmp_path / "checkpoints" / "step-00000030" / "adapter.safetensors"))
    assert set(loaded) == set(trained) and len(trained) > 0
    assert all(torch.equal(loaded[name], trained[name]) for name in trained)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": float("nan")}, "--lr must be a positive number"),
        ({"validate_every": 1, "validation_count": 0}, "--validation-count must be at least 1"),
        ({"warmup_steps": -3}, "--warmup-steps >= 0"),
        ({"max_sequence_length": 0}, "--max-sequence-length must be at least 1"),
    ],
)
def test_impossible_options_are_refused_before_anything_loads(change, message, tmp_path):
    options = TrainOptions(base="unused", data="unused", output=str(tmp_path / "o"), **change)
    with pytest.raises(TrainError, match=message):
        train_lora(options)
    assert not (tmp_path / "o").exists()


def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(
    tmp_path, mined, monkeypatch
):
    import nhr.train.loop as loop

    run_dir, _ = mined
    monkeypatch.setattr(loop, "family_for", lambda *a: pytest.fail("the model was loaded"))
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(TrainError, match="is a file, not a folder"):
        train_lora(TrainOptions(base="unused", data=str(run_dir), output=str(blocker)))
    with pytest.raises(TrainError, match="cannot be written"):
        train_lora(TrainOptions(base="unused", data=str(run_dir), output=str(blocker / "x")))
