"""A prepared GPU check: real-size random-weight models through nhr's diffusers and
transformers backends, measured side by side in one run.

    python benchmarks/gpu_check.py            # on a GPU: real sizes, 1024x1024, within 9 minutes
    python benchmarks/gpu_check.py --tiny     # the same code on tiny models, on CPU, seconds

Models are built with random weights from the dimensions of their published configs (written
below; nothing is downloaded): the FLUX.1 Kontext [dev] transformer with its two text
encoders (CLIP-L, T5-XXL encoder) and VAE, and a Qwen2.5-VL-7B-Instruct sized VLM. Tokenizers
are small byte-level ones built in memory (their vocabularies are not published weights); the
embedding tables keep the real vocabulary sizes, and prompts are padded to the real lengths
(77 CLIP, 512 T5 tokens), so every matrix the GPU multiplies has its real size. Each model is
saved once to a folder (`--folder`; reused when it is there) and loaded from it through the
backend code a user runs: `from_pretrained(folder)` with `dtype`, `device`, `cpu_offload`.

What is measured, in this order, each figure on its own line:
  1. the editor's load time and loaded dtype per component;
  2. edit images/s at `--size` with the configured steps and guidance (configs/paper.yaml's
     editor) through nhr's diffusers backend at the edit stage's batch size, then a
     hand-written diffusers loop (one image per call) over the same loaded pipeline;
  3. VLM validator requests/s through the transformers backend: the validator's prompt with two
     images per request (source and edit) at the validate stage's batch size and answer length
     (random weights never stop early, so every answer has the full length);
  4. peak GPU memory for the other batch sizes of `--batch-sizes`;
  5. what an out-of-memory batch does: on CUDA the process's memory is capped between the
     batch-1 and batch-2 peaks (a real OutOfMemoryError); on CPU the pipeline call raises
     torch.cuda.OutOfMemoryError for batches over 1. The backend halves the batch, goes on and
     records what still does not fit as failures.
A time budget (`--budget-s`, 540 s) is checked before each step against an estimate from the
warm-up; what does not fit is skipped and named. A step that raises is reported (traceback on
stderr), the others still run, and the exit status is 1. The last line is always:

    gpu: edit_images_per_s N.NN (hand loop N.NN, ratio N.NN) vlm_requests_per_s N.NN dtype D

`--layers N` keeps every width but only N blocks per stack: a check of the real-size code
path on a machine too small for the real models (e.g. `--device cpu --steps 1 --size 256`).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import shutil
import string
import sys
import tempfile
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from string import Template
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]

# -- published dimensions ----------------------------------------------------------------------

# black-forest-labs/FLUX.1-Kontext-dev: transformer/, text_encoder/ (CLIP ViT-L/14 text model),
# text_encoder_2/ (T5 v1.1 XXL encoder), vae/, scheduler/ config.json.
REAL = {
    "transformer": dict(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=[16, 56, 56],
    ),
    "clip": dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        projection_dim=768,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    ),
    "t5": dict(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
    ),
    "vae": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=1024,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    ),
    "scheduler": dict(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    ),
    # Qwen/Qwen2.5-VL-7B-Instruct: config.json and preprocessor_config.json.
    "vlm_text": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    ),
    "vlm_vision": dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
    ),
    "vlm_images": dict(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, patch_size=14, merge_size=2),
}

# The same families, tiny: the configs must agree as the real ones do (transformer in_channels
# = 4 * VAE latent channels, joint_attention_dim = T5 d_model, pooled_projection_dim = CLIP
# hidden size, sum(axes_dims_rope) = attention_head_dim, mrope_section sums to head_dim / 2).
TINY = {
    **REAL,
    "transformer": dict(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=[4, 4, 8],
    ),
    "clip": dict(
        vocab_size=600,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=32,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    ),
    "t5": dict(vocab_size=256, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4),
    "vae": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 8],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ),
    "vlm_text": dict(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]},
    ),
    "vlm_vision": dict(
        depth=2,
        hidden_size=32,
        intermediate_size=48,
        num_heads=4,
        out_hidden_size=32,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
    ),
}

INSTRUCTIONS = [
    "remove the cup from the table",
    "make the car red",
    "add a small dog next to the bench",
    "turn the scene into a snowy winter evening",
]
QWEN_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# ChatML with Qwen-VL's image markup (the layout of Qwen2.5-VL's chat template)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def with_layers(sizes: dict, layers: int | None) -> dict:
    """`sizes` with at most `layers` blocks per stack (every width kept)."""
    if layers is None:
        return sizes
    cut = json.loads(json.dumps(sizes))
    cut["transformer"].update(
        num_layers=min(layers, cut["transformer"]["num_layers"]),
        num_single_layers=min(layers, cut["transformer"]["num_single_layers"]),
    )
    cut["clip"]["num_hidden_layers"] = min(layers, cut["clip"]["num_hidden_layers"])
    cut["t5"]["num_layers"] = min(layers, cut["t5"]["num_layers"])
    cut["vlm_text"]["num_hidden_layers"] = min(layers, cut["vlm_text"]["num_hidden_layers"])
    vision = cut["vlm_vision"]
    vision["depth"] = min(layers, vision["depth"])
    vision["fullatt_block_indexes"] = [vision["depth"] - 1]
    return cut


# -- tokenizers built in memory (no hub) ---------------------------------------------------------


def byte_characters() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 bytes, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)}
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    characters, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            characters.append(chr(byte))
        else:
            characters.append(chr(256 + shifted))
            shifted += 1
    return characters


def clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in byte_characters():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(char, -3.0), ("▁" + char, -3.5)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def qwen_tokenizer() -> Any:
    from transformers import Qwen2Tokenizer

    vocab = {char: byte for byte, char in enumerate(byte_characters())}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


# -- building and saving -----------------------------------------------------------------------


@contextmanager
def creating(device: str, dtype: Any):
    """New parameters are created directly on `device` in `dtype` (fast and lean on a GPU)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def parameter_count(*modules: Any) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def count_text(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.2f}M"


def saved_before(folder: Path, spec: dict) -> bool:
    marker = folder / "gpu_check.json"
    return marker.exists() and json.loads(marker.read_text()) == spec


def make_room(root: Path, needed_bytes: float, keep: Path) -> None:
    """Delete other model folders under `root` (already loaded) if the disk lacks room."""
    for other in sorted(root.iterdir()):
        if shutil.disk_usage(root).free > needed_bytes * 1.05:
            return
        if other != keep and (other / "gpu_check.json").exists():
            print(f"disk: removing {other} to make room ({needed_bytes / 2**30:.1f} GiB needed)")
            shutil.rmtree(other)
    free = shutil.disk_usage(root).free
    if free < needed_bytes:
        raise RuntimeError(
            f"{needed_bytes / 2**30:.1f} GiB needed in {root}, {free / 2**30:.1f} GiB free: "
            "point --folder to a larger disk"
        )


def build_editor(folder: Path, sizes: dict, dtype: Any, device: str) -> str:
    """A random FluxKontextPipeline of `sizes`, saved to `folder`; returns what was built."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(0)
    with creating(device, dtype):
        transformer = FluxTransformer2DModel(**sizes["transformer"])
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **{**sizes["clip"], "vocab_size": max(sizes["clip"]["vocab_size"], len(tokenizer))},
                bos_token_id=0,
                eos_token_id=1,  # the in-memory tokenizer's <|endoftext|>
                pad_token_id=1,
            )
        )
        t5 = {**sizes["t5"], "vocab_size": max(sizes["t5"]["vocab_size"], len(tokenizer_2))}
        text_encoder_2 = T5EncoderModel(
            T5Config(**t5, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        )
        vae = AutoencoderKL(**sizes["vae"])
    counts = [parameter_count(m) for m in (transformer, text_encoder, text_encoder_2, vae)]
    pipeline = FluxKontextPipeline(
        transformer=transformer,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(**sizes["scheduler"]),
    )
    make_room(folder.parent, sum(counts) * dtype.itemsize, keep=folder)
    pipeline.save_pretrained(folder)
    del pipeline, transformer, text_encoder, text_encoder_2, vae
    free_memory()
    each = ", ".join(
        f"{name} {count_text(count)}"
        for name, count in zip(("transformer", "clip", "t5", "vae"), counts)
    )
    return f"FluxKontextPipeline {count_text(sum(counts))} params ({each})"


def build_vlm(folder: Path, sizes: dict, dtype: Any, device: str) -> str:
    """A random Qwen2.5-VL of `sizes`, saved to `folder` the way hub repos ship it."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = qwen_tokenizer()
    token = tokenizer.convert_tokens_to_ids
    text = {
        **sizes["vlm_text"],
        "vocab_size": max(sizes["vlm_text"]["vocab_size"], len(tokenizer)),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        "tie_word_embeddings": False,
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=sizes["vlm_vision"],
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with creating(device, dtype):
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    count = parameter_count(model)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    make_room(folder.parent, count * dtype.itemsize, keep=folder)
    model.save_pretrained(folder)
    del model
    free_memory()
    save_vlm_processor(folder, tokenizer, sizes["vlm_images"])
    return f"Qwen2_5_VLForConditionalGeneration {count_text(count)} params"


def save_vlm_processor(folder: Path, tokenizer: Any, images: dict) -> None:
    """The tokenizer, the image processor (naming its processor class) and the chat template
    (chat_template.json), as Qwen2.5-VL's hub repo has them. With torchvision installed the
    backend loads them with AutoProcessor, without it through its image-only stand-in."""
    import transformers

    processor_class = getattr(transformers, "Qwen2VLImageProcessorPil", None)
    processor_class = processor_class or transformers.Qwen2VLImageProcessor
    tokenizer.save_pretrained(folder)
    processor_class(**images).save_pretrained(folder)
    preprocessor = folder / "preprocessor_config.json"
    settings = json.loads(preprocessor.read_text())
    settings["processor_class"] = "Qwen2_5_VLProcessor"
    preprocessor.write_text(json.dumps(settings, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_CHAT_TEMPLATE}))


def ensure_saved(kind: str, folder: Path, spec: dict, build: Any) -> None:
    """Build and save a model once; a folder saved with the same spec is reused."""
    if saved_before(folder, spec):
        print(f"build {kind}: reusing {folder}")
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    what = build()
    (folder / "gpu_check.json").write_text(json.dumps(spec))
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30
    print(
        f"build {kind}: {what}, saved {size:.2f} GiB to {folder} "
        f"in {time.perf_counter() - started:.1f} s"
    )


# -- measuring ----------------------------------------------------------------------------------


class Budget:
    """Seconds left for the run; a step whose estimate does not fit is skipped and named."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def allows(self, step: str, estimate: float) -> bool:
        if estimate <= self.left():
            return True
        self.skipped.append(step)
        print(f"skipped: {step} (needs ~{estimate:.0f} s, {max(0.0, self.left()):.0f} s left)")
        return False


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def start_peak(device: str) -> None:
    import torch

    if is_cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_text(device: str) -> str:
    import torch

    if not is_cuda(device):
        return "peak GPU memory n/a on cpu"
    torch.cuda.synchronize()
    return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"


def peak_bytes(device: str) -> int | None:
    import torch

    return torch.cuda.max_memory_allocated() if is_cuda(device) else None


def source_images(size: int, count: int) -> list[bytes]:
    """Smooth random RGB pictures (PNG): not blank, different per seed."""
    import numpy as np
    from PIL import Image

    images = []
    for seed in range(count):
        coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def edit_requests(sources: list[bytes], count: int, first_seed: int) -> list[Any]:
    from nhr.backends.base import EditRequest

    return [
        EditRequest(sources[i % len(sources)], INSTRUCTIONS[i % len(INSTRUCTIONS)], first_seed + i)
        for i in range(count)
    ]


# Outputs the pipeline did produce but nhr's checks refused (random weights can draw them)
REFUSED_OUTPUTS = {"nan_output", "blank_output", "safety"}


def nhr_edit(backend: Any, requests: list[Any], device: str) -> dict:
    """One `edit` call of nhr's backend: produced images, failures, seconds, peak memory."""
    start_peak(device)
    started = time.perf_counter()
    results = backend.edit(requests)
    seconds = time.perf_counter() - started
    failures = Counter(r.reason for r in results if not isinstance(r, bytes))
    produced = sum(isinstance(r, bytes) for r in results)
    produced += sum(failures[reason] for reason in REFUSED_OUTPUTS)
    return {
        "produced": produced,
        "failures": dict(failures),
        "seconds": seconds,
        "peak": peak_text(device),
        "peak_bytes": peak_bytes(device),
        "outputs": [r for r in results if isinstance(r, bytes)],
    }


def hand_loop(pipeline: Any, requests: list[Any], steps: int, guidance: float, device: str):
    """What a user writes without nhr: one pipeline call per image, saved as PNG."""
    import torch
    from PIL import Image

    start_peak(device)
    started = time.perf_counter()
    for request in requests:
        image = Image.open(io.BytesIO(request.image)).convert("RGB")
        width, height = image.size
        output = pipeline(
            image=image,
            prompt=request.instruction,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=width,
            height=height,
            max_area=width * height,  # edit at the input's size, as nhr does
            _auto_resize=False,
            generator=torch.Generator("cpu").manual_seed(request.seed),
        ).images[0]
        output.save(io.BytesIO(), format="PNG")
    return time.perf_counter() - started, peak_text(device), peak_bytes(device)


@contextmanager
def failing_batches(pipeline: Any, over: int | None, calls: list[tuple[int, str]]):
    """Record each pipeline call's batch size and outcome; with `over`, raise CUDA's
    OutOfMemoryError for batches larger than that (a fake for machines without a GPU)."""
    import torch

    real_class = type(pipeline)
    real_call = real_class.__call__

    class Recorded(real_class):
        def __call__(self, *args, **kwargs):
            size = len(kwargs["prompt"])
            try:
                if over is not None and size > over:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (faked on cpu)")
                output = real_call(self, *args, **kwargs)
            except torch.OutOfMemoryError:
                calls.append((size, "out of memory"))
                raise
            calls.append((size, "ok"))
            return output

    pipeline.__class__ = Recorded
    try:
        yield
    finally:
        pipeline.__class__ = real_class


@contextmanager
def memory_cap(device: str, cap_bytes: int | None):
    """On CUDA, cap what this process may allocate (torch raises OutOfMemoryError above it)."""
    import torch

    if not is_cuda(device) or cap_bytes is None:
        yield
        return
    index = torch.device(device).index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    free_memory()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        free_memory()


def loaded_dtypes(modules: dict[str, Any]) -> dict[str, str]:
    return {
        name: str(next(module.parameters()).dtype).removeprefix("torch.")
        for name, module in modules.items()
        if module is not None and hasattr(module, "parameters")
    }


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


# -- the run ------------------------------------------------------------------------------------


def reference_settings(path: Path) -> dict:
    """Editor steps, guidance and batch size, and the validator's batch size and answer length,
    from a config (configs/paper.yaml: FLUX.1 Kontext at 28 steps, guidance 2.5)."""
    import yaml

    from nhr.config import parse_config

    config = parse_config(yaml.safe_load(path.read_text()))
    editor = config.models.editor
    return {
        "steps": getattr(editor, "steps", None) or 28,
        "guidance": getattr(editor, "guidance", None) or 2.5,
        "edit_batch": config.edit.batch_size,
        "validate_batch": config.validate_.batch_size,
        "answer_tokens": config.validate_.judge.max_tokens,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models on CPU")
    parser.add_argument("--device", help="default: cuda (cpu with --tiny)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--cpu-offload", default="none", choices=["none", "model", "sequential"])
    parser.add_argument("--size", type=int, help="edit size in pixels (1024; 64 with --tiny)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the config's)")
    parser.add_argument("--batch-sizes", help="edit batch sizes for the memory figures")
    parser.add_argument("--budget-s", type=float, help="seconds for the whole run (540; 120)")
    parser.add_argument("--folder", type=Path, help="where the models are saved and reused")
    parser.add_argument("--layers", type=int, help="keep only N blocks per stack (a check)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "paper.yaml")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.size = args.size or (64 if tiny else 1024)
    args.batch_sizes = [
        int(b) for b in (args.batch_sizes or ("1,2,4" if tiny else "1,2,4,8")).split(",")
    ]
    args.budget_s = args.budget_s or (120.0 if tiny else 540.0)
    name = "nhr-gpu-check-tiny" if tiny else "nhr-gpu-check"
    args.folder = args.folder or Path(tempfile.gettempdir()) / name
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    try:
        settings = reference_settings(args.config)
    except Exception as error:  # the check must run even if the config does not parse
        settings = dict(steps=28, guidance=2.5, edit_batch=4, validate_batch=8, answer_tokens=64)
        print(
            f"config: {args.config} unreadable ({type(error).__name__}: {error}); using {settings}"
        )
    args.steps = args.steps or (2 if args.tiny else settings["steps"])
    device_name = torch.cuda.get_device_name(args.device) if is_cuda(args.device) else "cpu"
    print(
        f"gpu_check: {'tiny' if args.tiny else 'real-size'} random models"
        f"{f' ({args.layers} blocks per stack)' if args.layers else ''} on {args.device} "
        f"({device_name}), {args.dtype}, {args.size}x{args.size}, {args.steps} steps, guidance "
        f"{settings['guidance']}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}; budget {args.budget_s:.0f} s"
    )
    check = Check(args, settings, budget)
    # Each step that fails is reported and the others still run: a lent GPU is rare.
    check.step("editor", check.load_editor)
    if check.editor is not None:
        check.step("warm-up", check.warm_up)
    if check.per_image is not None:
        check.step("edit throughput", check.edit_throughput)
    check.step("VLM", check.vlm_throughput)
    if check.per_image is not None:
        check.step("edit memory", check.edit_memory)
        check.step("out-of-memory batch", check.out_of_memory)

    measured = {size: peak for size, peak in sorted(check.peaks.items()) if peak is not None}
    if measured:
        print(
            "peak GPU memory by batch size: "
            + ", ".join(f"{size}: {peak / 2**30:.1f} GiB" for size, peak in measured.items())
        )
    ratio = check.nhr_rate / check.hand_rate if check.hand_rate else 0.0
    if budget.skipped:
        print(f"skipped (time budget {args.budget_s:.0f} s): {'; '.join(budget.skipped)}")
    if check.failed:
        print(f"failed: {', '.join(check.failed)} (tracebacks on stderr)")
    print(f"total: {time.perf_counter() - budget.started:.1f} s")
    shown = "+".join(sorted(set(check.dtypes.values()))) or "none"
    print(
        f"gpu: edit_images_per_s {check.nhr_rate:.2f} (hand loop {check.hand_rate:.2f}, "
        f"ratio {ratio:.2f}) vlm_requests_per_s {check.vlm_rate:.2f} dtype {shown}"
    )
    return 1 if check.failed else 0


class Check:
    """The steps of the check and the figures they leave for the last line."""

    def __init__(self, args: argparse.Namespace, settings: dict, budget: Budget) -> None:
        import torch

        self.args, self.settings, self.budget = args, settings, budget
        self.sizes = with_layers(TINY if args.tiny else REAL, args.layers)
        self.dtype = getattr(torch, args.dtype)
        self.spec = {"sizes": self.sizes, "dtype": args.dtype}
        self.build_device = args.device if args.cpu_offload == "none" else "cpu"
        self.batch = settings["edit_batch"]
        self.sources = source_images(args.size, 4)
        self.editor: Any = None
        self.per_image: float | None = None  # seconds per image at the configured steps
        self.per_step = 0.0
        self.editor_setup = 0.0  # seconds to build, save and load the editor
        self.peaks: dict[int, int | None] = {}
        self.dtypes: dict[str, str] = {}
        self.nhr_rate = self.hand_rate = self.vlm_rate = 0.0
        self.edited: bytes | None = None
        self.failed: list[str] = []
        args.folder.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, run: Any) -> None:
        try:
            run()
        except Exception as error:
            self.failed.append(name)
            print(f"failed: {name}: {type(error).__name__}: {str(error)[:300]}")
            traceback.print_exc()
            free_memory()

    def load_editor(self) -> None:
        """Build and save the editor once; load it through nhr's diffusers backend."""
        from nhr.backends.configs import DiffusersBackendConfig
        from nhr.backends.diffusers import DiffusersBackend

        args = self.args
        folder = args.folder / "flux-kontext"
        setup_started = time.perf_counter()
        ensure_saved(
            "editor",
            folder,
            self.spec,
            lambda: build_editor(folder, self.sizes, self.dtype, self.build_device),
        )
        editor = DiffusersBackend(
            DiffusersBackendConfig(
                backend="diffusers",
                model=str(folder),
                dtype=args.dtype,
                device=args.device,
                cpu_offload=args.cpu_offload,
                steps=args.steps,
                guidance=self.settings["guidance"],
            )
        )
        started = time.perf_counter()
        pipeline = editor.pipeline
        names = ("transformer", "text_encoder", "text_encoder_2", "vae")
        loaded = loaded_dtypes({name: getattr(pipeline, name, None) for name in names})
        print(
            f"load editor: {time.perf_counter() - started:.1f} s through nhr's diffusers backend "
            f"({type(pipeline).__name__}, device {args.device}, cpu_offload {args.cpu_offload})"
        )
        print("dtype editor: " + ", ".join(f"{n} {d}" for n, d in loaded.items()))
        self.editor_setup = time.perf_counter() - setup_started
        self.dtypes.update(loaded)
        self.editor = editor

    def warm_up(self) -> None:
        """One and two steps at the real size give the cost per step and per image."""
        pipeline, guidance = self.editor.pipeline, self.settings["guidance"]
        warm = edit_requests(self.sources, 1, first_seed=1000)
        timings = [hand_loop(pipeline, warm, n, guidance, self.args.device)[0] for n in (1, 1, 2)]
        self.per_step = max(timings[2] - timings[1], 1e-3)
        self.per_image = max(timings[1] - self.per_step, 0.0) + self.args.steps * self.per_step
        print(
            f"warm-up: first call {timings[0]:.2f} s, 1 step {timings[1]:.2f} s, 2 steps "
            f"{timings[2]:.2f} s -> about {self.per_image:.2f} s per image at "
            f"{self.args.steps} steps"
        )

    def edit_throughput(self) -> None:
        """nhr's batched edit vs a hand-written loop: the same images, seeds and pipeline."""
        args, batch = self.args, self.batch
        estimate = 2.2 * batch * self.per_image
        if not self.budget.allows(f"edits through nhr and the hand loop ({batch} each)", estimate):
            return
        requests = edit_requests(self.sources, batch, first_seed=0)
        measured = nhr_edit(self.editor, requests, args.device)
        self.peaks[batch] = measured["peak_bytes"]
        self.nhr_rate = rate(measured["produced"], measured["seconds"])
        self.edited = (measured["outputs"] or [None])[0]
        # a measured figure beats the warm-up's estimate for the budget of later steps
        self.per_image = max(self.per_image, measured["seconds"] / batch)
        print(
            f"edit nhr batch {batch}: {measured['produced']} images in "
            f"{measured['seconds']:.2f} s = {self.nhr_rate:.3f} images/s, {measured['peak']}, "
            f"failures {measured['failures'] or 0}"
        )
        pipeline, guidance = self.editor.pipeline, self.settings["guidance"]
        seconds, peak, self.peaks[1] = hand_loop(
            pipeline, requests, args.steps, guidance, args.device
        )
        self.hand_rate = rate(len(requests), seconds)
        print(
            f"edit hand loop: {len(requests)} images one per call in {seconds:.2f} s "
            f"= {self.hand_rate:.3f} images/s, {peak} (batch 1)"
        )

    def vlm_throughput(self) -> None:
        """The validator's requests (two images each) through nhr's transformers backend."""
        from nhr.backends.base import VisionRequest
        from nhr.backends.configs import TransformersBackendConfig
        from nhr.backends.transformers import TransformersBackend
        from nhr.stages.validate import judge_prompt

        args, settings = self.args, self.settings
        # the 7B VLM has half the editor's parameters: about half its time to build, save and
        # load, plus a few batches
        estimate = 0.6 * self.editor_setup + (5 if args.tiny else 40)
        if not self.budget.allows("VLM validator requests/s", estimate):
            return
        folder = args.folder / "qwen2.5-vl"
        ensure_saved(
            "VLM",
            folder,
            self.spec,
            lambda: build_vlm(folder, self.sizes, self.dtype, self.build_device),
        )
        vlm = TransformersBackend(
            TransformersBackendConfig(
                backend="transformers", model=str(folder), dtype=args.dtype, device=args.device
            )
        )
        prompt = Template(judge_prompt("score"))
        images = (self.sources[0], self.edited or self.sources[1])
        asks = [
            VisionRequest(
                images=images,
                prompt=prompt.substitute(instruction=INSTRUCTIONS[i % len(INSTRUCTIONS)]),
                max_tokens=settings["answer_tokens"],
            )
            for i in range(settings["validate_batch"])
        ]
        started = time.perf_counter()
        vlm.ask(asks[:1])  # loads the model, and warms it up
        dtype = loaded_dtypes({"vlm": vlm._vision.model})["vlm"]  # what was loaded
        print(
            f"load VLM: {time.perf_counter() - started:.1f} s through nhr's transformers backend "
            f"(and 1 request), dtype {dtype}"
        )
        self.dtypes["vlm"] = dtype
        start_peak(args.device)
        before = vlm.usage()
        started = time.perf_counter()
        answers = vlm.ask(asks) + vlm.ask(asks)
        seconds = time.perf_counter() - started
        usage = {key: value - before[key] for key, value in vlm.usage().items()}
        failures = Counter(a.reason for a in answers if not isinstance(a, str))
        self.vlm_rate = rate(sum(isinstance(a, str) for a in answers), seconds)
        print(
            f"vlm validator: {len(answers)} requests (2 images each, batches of {len(asks)}, "
            f"{usage['input_tokens'] / len(answers):.0f} prompt + "
            f"{usage['output_tokens'] / len(answers):.0f} answer tokens each) in "
            f"{seconds:.2f} s = {self.vlm_rate:.3f} requests/s, {peak_text(args.device)}, "
            f"failures {dict(failures) or 0}"
        )
        del vlm
        free_memory()

    def edit_memory(self) -> None:
        """Peak memory (and images/s) for the other batch sizes."""
        for size in [b for b in self.args.batch_sizes if b != self.batch]:
            if not self.budget.allows(f"edit batch {size}", 1.1 * size * self.per_image):
                continue
            requests = edit_requests(self.sources, size, first_seed=100 * size)
            measured = nhr_edit(self.editor, requests, self.args.device)
            self.peaks[size] = measured["peak_bytes"]
            print(
                f"edit nhr batch {size}: {measured['seconds']:.2f} s = "
                f"{rate(measured['produced'], measured['seconds']):.3f} images/s, "
                f"{measured['peak']}, failures {measured['failures'] or 0}"
            )

    def out_of_memory(self) -> None:
        """A batch that does not fit: split in halves, the run goes on, and what never fits is
        a failure. On CUDA the memory is capped between the batch-1 and batch-2 needs (a real
        OutOfMemoryError); elsewhere the pipeline raises one for batches over 1."""
        import torch

        args, editor = self.args, self.editor
        steps, count = 2, max(self.batch, 2)
        estimate = 2.5 * count * (self.per_image - (args.steps - steps) * self.per_step)
        if not self.budget.allows(f"out-of-memory batch of {count}", estimate):
            return
        cap = None
        if is_cuda(args.device) and self.peaks.get(1):
            weights = torch.cuda.memory_allocated()
            cap = int(weights + 1.5 * (self.peaks[1] - weights))
        calls: list[tuple[int, str]] = []
        saved_config, saved_limits = editor.config, dict(editor.batch_limits)
        editor.config = editor.config.model_copy(update={"steps": steps})
        editor.batch_limits.clear()
        fake_over = None if cap is not None else 1
        try:
            with memory_cap(args.device, cap), failing_batches(editor.pipeline, fake_over, calls):
                measured = nhr_edit(editor, edit_requests(self.sources, count, 500), args.device)
        finally:
            limit = editor.batch_limits.get((args.size, args.size), count)
            editor.config, editor.batch_limits = saved_config, saved_limits
        how = f"over a cap of {cap / 2**30:.1f} GiB" if cap else "faked over batch 1"
        print(
            f"oom: batch of {count} at {steps} steps, out of memory {how}: calls "
            f"{', '.join(f'{n} {outcome}' for n, outcome in calls)}; "
            f"{measured['produced']} images, failures {measured['failures'] or 0}; "
            f"later batches run {limit} at a time"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
