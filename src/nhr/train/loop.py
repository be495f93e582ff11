"""The LoRA training loop of `nhr train lora` (see nhr/train/__init__.py for the outputs).

Flow matching as the pipelines' `FlowMatchEulerDiscreteScheduler` defines it: a training
timestep is drawn uniformly from the scheduler's own timesteps (with its shift), the noisy
target is `(1 - sigma) * target + sigma * noise`, the transformer sees it beside the clean
source latents and predicts the velocity `noise - target`; the loss is the mean squared error
of that prediction on the target tokens only.

Determinism: the data order of an epoch, and the noise and timesteps of a step, are drawn from
generators seeded by (seed, epoch) and (seed, step, process), so a step's batch does not
depend on what ran before it. With the adapter, optimizer and LR scheduler restored from a
checkpoint, `--resume` therefore continues to the same losses as an uninterrupted run.

Multi-GPU: launched with `accelerate launch --multi_gpu --num_processes N -m nhr.cli train lora
...` (or `torchrun --nproc_per_node N -m nhr.cli ...`), each process takes `--batch-size`
triplets of every step's batch and accelerate averages the gradients; only the main process
writes checkpoints, grids and the adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nhr.train.data import TripletData, load_triplets, paired_square
from nhr.train.errors import TrainError
from nhr.train.families import family_for, lora_targets
from nhr.train.options import TrainOptions

log = logging.getLogger(__name__)

ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights finds
SUMMARY_FILE = "nhr-train.json"
CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2  # older ones are removed: each holds the optimizer state too
# options that must match for --resume to continue the same run
RESUME_KEYS = (
    "base",
    "data",
    "rank",
    "lr",
    "batch_size",
    "resolution",
    "seed",
    "mixed_precision",
    "guidance",
    "max_sequence_length",
)


def _seed_of(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class BatchOrder:
    """Which training triplets each step uses: every epoch is a seeded permutation."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self._perms: dict[int, np.ndarray] = {}

    def positions(self, step: int, per_step: int) -> list[int]:
        out = []
        for flat in range(step * per_step, (step + 1) * per_step):
            epoch, index = divmod(flat, self.size)
            if epoch not in self._perms:
                self._perms = {
                    epoch: np.random.default_rng(_seed_of(self.seed, "epoch", epoch)).permutation(
                        self.size
                    )
                }
            out.append(int(self._perms[epoch][index]))
        return out


def train_lora(options: TrainOptions) -> dict[str, Any]:
    """Train, checkpoint and save the adapter; returns the summary written to
    OUTPUT/nhr-train.json."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    output = Path(options.output)
    started = _latest_checkpoint(output)
    if started is not None and not options.resume:
        raise TrainError(
            f"{output} holds checkpoints of an earlier run: pass --resume to continue it, or a "
            "new --output"
        )
    if started is not None:
        _check_resume(started, options)  # before the model loads
    elif options.resume:
        log.warning("--resume: %s holds no checkpoint yet, so training starts at step 0", output)
    _check_writable(output)  # now, not after the model load and the steps to a checkpoint
    family = family_for(options.base, options.guidance)
    data = load_triplets(options.data)
    accelerator = Accelerator(mixed_precision=options.mixed_precision, cpu=options.device == "cpu")
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        options.mixed_precision, torch.float32
    )
    pipe = _load_pipeline(family.pipeline_class, options.base, weight_dtype)
    pipe.to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, part, None)
        if module is not None:
            module.requires_grad_(False)
    transformer = pipe.transformer
    torch.manual_seed(_seed_of(options.seed, "lora-init"))  # the same initial adapter every time
    transformer.add_adapter(
        LoraConfig(
            r=options.rank,
            lora_alpha=options.rank,  # scale 1: the saved adapter loads with the same strength
            init_lora_weights="gaussian",
            target_modules=lora_targets(transformer, family.targets),
        )
    )
    cast_training_params(transformer, dtype=torch.float32)  # the trained weights stay fp32
    if options.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=1e-4)
    lr_scheduler = get_scheduler(
        "constant_with_warmup",
        optimizer=optimizer,
        num_warmup_steps=options.warmup_steps,
        num_training_steps=options.steps,
    )
    step, losses = 0, []
    if started is not None:
        step, losses = _load_checkpoint(started, options, transformer, optimizer, lr_scheduler)
        log.info("resuming from %s at step %d", started, step)
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    sampler = _TimestepSampler(pipe.scheduler)
    order = BatchOrder(len(data), options.seed)
    per_step = options.batch_size * accelerator.num_processes
    max_length = options.max_sequence_length or family.default_max_sequence_length
    validation = data.validation(options.validation_count)
    transformer.train()
    while step < options.steps:
        positions = order.positions(step, per_step)
        mine = positions[accelerator.process_index * options.batch_size :][: options.batch_size]
        batch_triplets = [data.triplet(data.train[p]) for p in mine]
        generator = torch.Generator().manual_seed(
            _seed_of(options.seed, "step", step, accelerator.process_index)
        )
        with accelerator.accumulate(transformer), accelerator.autocast():
            loss = _loss(
                pipe,
                family,
                transformer,
                batch_triplets,
                options.resolution,
                max_length,
                sampler,
                generator,
                accelerator.device,
                weight_dtype,
            )
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(float(accelerator.reduce(loss.detach(), reduction="mean").item()))
        log.info("step %d/%d loss %.5f", step, options.steps, losses[-1])
        if options.progress and accelerator.is_main_process:
            print(f"step {step}/{options.steps} loss {losses[-1]:.5f}", flush=True)
        checkpoint_due = step % options.checkpoint_every == 0 or step == options.steps
        if checkpoint_due:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _save_checkpoint(
                    output,
                    step,
                    losses,
                    options,
                    accelerator.unwrap_model(transformer),
                    optimizer,
                    lr_scheduler,
                )
        if options.validate_every and (step % options.validate_every == 0 or step == options.steps):
            if accelerator.is_main_process:
                _validation_grid(
                    pipe,
                    family,
                    accelerator.unwrap_model(transformer),
                    data,
                    validation,
                    options,
                    step,
                    output,
                    accelerator,
                )
            transformer.train()
    accelerator.wait_for_everyone()
    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        _save_adapter(pipe, family, accelerator.unwrap_model(transformer), output)
        summary = {
            "base": options.base,
            "pipeline": family.pipeline_class,
            "data": str(options.data),
            "train_triplets": len(data),
            "steps": step,
            "losses": losses,
            "adapter": str(output / ADAPTER_FILE),
            "options": options.as_dict(),
        }
        (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.end_training()
    return summary


class _TimestepSampler:
    """Training timesteps and sigmas drawn uniformly from the pipeline scheduler's own table
    (a fresh copy: an inference call resets the pipeline's scheduler to fewer steps)."""

    def __init__(self, scheduler: Any) -> None:
        fresh = type(scheduler).from_config(scheduler.config)
        self.sigmas = fresh.sigmas[: len(fresh.timesteps)].clone().float()

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(self.sigmas), (count,), generator=generator)
        return self.sigmas[index]


def _loss(
    pipe: Any,
    family: Any,
    transformer: Any,
    triplets: list[Any],
    resolution: int,
    max_length: int,
    sampler: _TimestepSampler,
    generator: torch.Generator,
    device: Any,
    dtype: torch.dtype,
) -> torch.Tensor:
    pairs = [paired_square(t.source, t.edited, resolution) for t in triplets]
    sources = torch.stack([s for s, _ in pairs]).to(device, dtype)
    targets = torch.stack([e for _, e in pairs]).to(device, dtype)
    source_images = [t.source.resize((resolution, resolution)) for t in triplets]
    with torch.no_grad():
        batch = family.encode(
            pipe, [t.instruction for t in triplets], source_images, (sources, targets), max_length
        )
    clean = batch.target.float()
    noise = torch.randn(clean.shape, generator=generator).to(device)
    sigmas = sampler.draw(clean.shape[0], generator).to(device)
    view = sigmas.view(-1, *[1] * (clean.ndim - 1))
    noisy = (1.0 - view) * clean + view * noise
    # the prepared (possibly DDP-wrapped) transformer runs the forward, so gradients sync
    predicted = family.predict(pipe, transformer, noisy.to(dtype), batch, sigmas)
    return torch.mean((predicted.float() - (noise - clean)) ** 2)


def _load_pipeline(name: str, model: str, dtype: torch.dtype) -> Any:
    import diffusers

    from nhr.backends.diffusers import dtype_keyword

    load = getattr(diffusers, name).from_pretrained
    try:
        return load(model, **{dtype_keyword(load): dtype})
    except Exception as error:
        raise TrainError(f"cannot load {model}: {type(error).__name__}: {error}") from error


def _adapter_state(transformer: Any) -> dict[str, torch.Tensor]:
    """The adapter under peft's names (`lora_A`/`lora_B`), which every diffusers LoRA loader
    reads; diffusers' older `lora.down`/`lora.up` renaming is partial (it skips the text-stream
    projections) and the Qwen-Image loader then drops the renamed layers."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer)


def _check_resume(folder: Path, options: TrainOptions) -> None:
    """--resume continues the run of `folder` only with the options that shape it; a local
    base or data folder is the same one however its path is written."""
    import os

    def place(key: str, value: Any) -> Any:
        if key in ("base", "data") and isinstance(value, str) and os.path.exists(value):
            return os.path.realpath(value)
        return value

    saved = json.loads((folder / "state.json").read_text())["options"]
    now = options.as_dict()
    changed = [key for key in RESUME_KEYS if place(key, saved.get(key)) != place(key, now.get(key))]
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {now.get(key)!r}" for key in changed)
        raise TrainError(f"--resume with other options than {folder} ({details})")


def _check_writable(output: Path) -> None:
    """The output folder exists or can be made, and takes a file (one name per process: a
    multi-GPU launch checks from every process at once)."""
    import os

    if output.exists() and not output.is_dir():
        raise TrainError(f"--output {output} is a file, not a folder")
    probe = output / f".nhr-write-check-{os.getpid()}"
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise TrainError(
            f"--output {output} cannot be written: {error.strerror or error}"
        ) from None


def _save_adapter(pipe: Any, family: Any, transformer: Any, output: Path) -> None:
    import diffusers

    output.mkdir(parents=True, exist_ok=True)
    getattr(diffusers, family.pipeline_class).save_lora_weights(
        str(output), transformer_lora_layers=_adapter_state(transformer), safe_serialization=True
    )


def _latest_checkpoint(output: Path) -> Path | None:
    folder = output / CHECKPOINTS
    done = sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def _save_checkpoint(
    output: Path,
    step: int,
    losses: list[float],
    options: TrainOptions,
    transformer: Any,
    optimizer: Any,
    lr_scheduler: Any,
) -> None:
    """OUTPUT/checkpoints/step-NNNNNNNN/: the adapter (peft names), optimizer and LR
    scheduler states, RNG states, and state.json, written last: a checkpoint without it is
    incomplete and ignored."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = output / CHECKPOINTS / f"step-{step:08d}"
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    state = {
        k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(transformer).items()
    }
    save_file(state, str(partial / "adapter.safetensors"))
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), partial / "scheduler.pt")
    torch.save(
        {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        partial / "rng.pt",
    )
    (partial / "state.json").write_text(
        json.dumps({"step": step, "losses": losses, "options": options.as_dict()}, indent=2) + "\n"
    )
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    for old in sorted((output / CHECKPOINTS).glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(
    folder: Path, options: TrainOptions, transformer: Any, optimizer: Any, lr_scheduler: Any
) -> tuple[int, list[float]]:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    set_peft_model_state_dict(transformer, load_file(str(folder / "adapter.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return int(state["step"]), list(state["losses"])


def _validation_grid(
    pipe: Any,
    family: Any,
    transformer: Any,
    data: TripletData,
    handles: list[Any],
    options: TrainOptions,
    step: int,
    output: Path,
    accelerator: Any,
) -> None:
    """OUTPUT/validation/step-NNNNNNNN.png: one row per fixed validation triplet,
    source | edited (the mined target) | the model's edit, at the training resolution."""
    from nhr.backends.diffusers import family_arguments

    size = options.resolution
    transformer.eval()
    rows = []
    for number, handle in enumerate(handles):
        triplet = data.triplet(handle)
        source = _square(triplet.source, size)
        arguments = family_arguments(family.pipeline_class, size, size, 1, None)
        with torch.no_grad(), accelerator.autocast():
            edited = pipe(
                image=[source],
                prompt=[triplet.instruction],
                num_inference_steps=options.validation_steps,
                generator=[torch.Generator().manual_seed(number)],
                output_type="pil",
                **arguments,
            ).images[0]
        rows.append(
            [source, _square(triplet.edited, size), edited.convert("RGB").resize((size, size))]
        )
    grid = Image.new("RGB", (3 * size, len(rows) * size), "white")
    for row, images in enumerate(rows):
        for column, image in enumerate(images):
            grid.paste(image, (column * size, row * size))
    folder = output / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    grid.save(folder / f"step-{step:08d}.png")


def _square(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.Resampling.LANCZOS
    )
