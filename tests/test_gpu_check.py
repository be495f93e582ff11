"""benchmarks/gpu_check.py --tiny: the prepared GPU check runs end to end on tiny random models
on CPU (the same code that measures the real-size models on a GPU), so it is known to work
before a GPU is lent."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(
    r"gpu: edit_images_per_s (\d+\.\d\d) \(hand loop (\d+\.\d\d), ratio (\d+\.\d\d)\) "
    r"vlm_requests_per_s (\d+\.\d\d) dtype (\w+)"
)


def test_tiny_gpu_check_prints_every_figure(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny"]
        + ["--folder", str(tmp_path / "models")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    edit, hand, ratio, vlm, dtype = match.groups()
    assert float(edit) > 0 and float(hand) > 0 and float(ratio) > 0 and float(vlm) > 0
    assert dtype == "bfloat16"  # what was asked, and loaded

    text = done.stdout
    assert "skipped" not in text
    for figure in ("load editor:", "edit nhr batch 4:", "edit hand loop:", "vlm validator:"):
        assert figure in text
    assert "edit nhr batch 1:" in text and "edit nhr batch 2:" in text
    # an out-of-memory batch is split in halves and the run goes on with batches of 1
    (oom,) = [line for line in lines if line.startswith("oom:")]
    assert "4 out of memory, 2 out of memory, 1 ok" in oom
    assert "later batches run 1 at a time" in oom


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_dimensions_give_the_published_parameter_counts():
    """The configs written in the script are the published ones: built on the meta device
    (no memory), each model has exactly its published number of parameters."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        T5Config,
        T5EncoderModel,
    )

    real = load_gpu_check().REAL
    with torch.device("meta"):
        models = {
            "transformer": FluxTransformer2DModel(**real["transformer"]),
            "clip": CLIPTextModel(CLIPTextConfig(**real["clip"])),
            "t5": T5EncoderModel(T5Config(**real["t5"])),
            "vae": AutoencoderKL(**real["vae"]),
            "vlm": Qwen2_5_VLForConditionalGeneration(
                Qwen2_5_VLConfig(
                    text_config={**real["vlm_text"], "tie_word_embeddings": False},
                    vision_config=real["vlm_vision"],
                    tie_word_embeddings=False,
                )
            ),
        }
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert counts == {
        "transformer": 11_901_408_320,  # FLUX.1 [dev] / Kontext [dev]
        "clip": 123_060_480,  # CLIP ViT-L/14 text model
        "t5": 4_762_310_656,  # T5 v1.1 XXL encoder
        "vae": 83_819_683,
        "vlm": 8_292_166_656,  # Qwen2.5-VL-7B-Instruct
    }


def test_the_budget_skips_and_names_what_does_not_fit():
    gpu_check = load_gpu_check()
    budget = gpu_check.Budget(60)
    assert budget.allows("edits", 30)
    assert not budget.allows("VLM validator requests/s", 600)
    assert budget.skipped == ["VLM validator requests/s"]
    cut = gpu_check.with_layers(gpu_check.REAL, 1)
    assert cut["transformer"]["num_layers"] == cut["transformer"]["num_single_layers"] == 1
    assert cut["transformer"]["attention_head_dim"] == 128  # widths are kept
    assert gpu_check.REAL["transformer"]["num_layers"] == 19  # the original is untouched
