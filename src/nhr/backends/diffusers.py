"""Text-to-image and instruction-editing pipelines from diffusers, run in-process.

`DiffusersBackend(config)` serves one pipeline (a hub id or a local folder) as an
`ImageGenerator` or an `ImageEditor`, depending on the pipeline class. The pipeline loads on
the first call, once per process. A batch is split into groups of one output size; each group
goes through the pipeline in one call, with one seeded CPU `torch.Generator` per row, so a
row's noise depends only on its seed. Outputs come back as PNG bytes of exactly the requested
size (generate) or of the input image's size (edit), resized with Lanczos if the pipeline
rounded the size. NaN, blank and safety-blacked outputs become per-item errors; an exception
during a group is retried item by item once, and what still fails becomes an item error. A
call that runs out of GPU memory is split in halves instead, and later groups of that size
start at the halved batch size; a single item that still runs out of memory becomes a
(transient) item error, and the run goes on.

A model that cannot load raises `BackendSetupError` (the run stops with its message); an
editor asked to generate, or the reverse, answers every item with ``unsupported``.

This module imports torch and diffusers; `nhr.backends.create_backend` imports it only when a
run uses the diffusers backend.
"""

from __future__ import annotations

import gc
import inspect
import io
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from nhr.backends.base import (
    BackendError,
    BackendSetupError,
    CallInfo,
    EditRequest,
    GenerateRequest,
    MissingExtraError,
    PermanentBackendError,
    TransientBackendError,
)
from nhr.backends.configs import DiffusersBackendConfig

try:
    import diffusers
    import torch
except ImportError as error:  # pragma: no cover - depends on the environment
    raise MissingExtraError(
        f"the diffusers backend needs torch and diffusers ({error}); "
        "install them with: pip install 'nhr[diffusers]'"
    ) from error

log = logging.getLogger(__name__)

# Pipeline class -> what it does. A pipeline class outside this table is refused, because its
# call arguments (see `family_arguments`) are unknown.
PIPELINES: dict[str, str] = {
    "FluxPipeline": "generate",
    "QwenImagePipeline": "generate",
    "StableDiffusion3Pipeline": "generate",
    "StableDiffusionXLPipeline": "generate",
    "StableDiffusionPipeline": "generate",
    "FluxKontextPipeline": "edit",
    "QwenImageEditPipeline": "edit",
    "QwenImageEditPlusPipeline": "edit",
    "StableDiffusionInstructPix2PixPipeline": "edit",
}

# Editors whose `image` list means several reference images for one prompt, not a batch:
# they get one request per call.
ONE_REQUEST_PER_CALL = {"QwenImageEditPlusPipeline"}

# Width and height passed to a pipeline are rounded to this multiple (every family above
# accepts it; SD3 and SDXL refuse other sizes); the output is then resized to the exact size.
SIZE_MULTIPLE = 16

# An output whose pixel values (in [0, 1]) have a standard deviation below this is blank.
BLANK_STD = 2 / 255
# An output whose brightest value is below this is all black, which is what the safety
# checkers of the Stable Diffusion family return for a flagged image.
BLACK_MAX = 1 / 255

_ERROR_DETAILS = {
    "nan_output": "the pipeline returned NaN or infinite pixel values",
    "blank_output": "the pipeline returned a blank (near-constant) image",
    "safety": "the output was blacked out or flagged by the pipeline's safety checker",
}


def family_arguments(
    pipeline: str, width: int, height: int, count: int, guidance: float | None
) -> dict[str, Any]:
    """The call arguments that differ between pipeline families, for one call of `count`
    requests whose pipeline-side size is `width` x `height`.

    - Flux, SD3, SDXL, SD: `height`/`width`, `guidance_scale`.
    - FluxKontext: also `max_area=width*height` and `_auto_resize=False`, so the input is
      edited at its own size (rounded) instead of being rescaled to ~1 MP or to one of
      Kontext's preferred resolutions; `call_kwargs` may override both.
    - Qwen-Image (generate and edit): guidance is `true_cfg_scale` (4.0 by default), which
      only acts with a negative prompt, so a blank one is given as the model card does.
    - InstructPix2Pix: no size (it edits at the input's size); `image_guidance_scale` 1.5.
    """
    arguments: dict[str, Any] = {}
    if pipeline != "StableDiffusionInstructPix2PixPipeline":
        arguments.update(width=width, height=height)
    if pipeline.startswith("QwenImage"):
        true_cfg_scale = 4.0 if guidance is None else guidance
        arguments["true_cfg_scale"] = true_cfg_scale
        if true_cfg_scale > 1:
            arguments["negative_prompt"] = [" "] * count
    elif guidance is not None:
        arguments["guidance_scale"] = guidance
    if pipeline == "FluxKontextPipeline":
        arguments.update(max_area=width * height, _auto_resize=False)
    if pipeline == "StableDiffusionInstructPix2PixPipeline":
        arguments["image_guidance_scale"] = 1.5
    return arguments


def check_image(pixels: np.ndarray) -> str | None:
    """Why an output (H x W x C floats in [0, 1]) is unusable, or None if it is fine:
    ``nan_output`` (NaN or inf), ``safety`` (all black) or ``blank_output`` (near-constant)."""
    if not np.isfinite(pixels).all():
        return "nan_output"
    if float(pixels.max()) < BLACK_MAX:
        return "safety"
    if float(pixels.std()) < BLANK_STD:
        return "blank_output"
    return None


def encode_png(pixels: np.ndarray, size: tuple[int, int]) -> bytes:
    """PNG bytes of `pixels` (H x W x C floats in [0, 1]) at exactly `size` (width, height)."""
    array = (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(array).convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dtype_keyword(from_pretrained: Any) -> str:
    """The keyword under which this diffusers' `from_pretrained` reads the torch dtype.

    Newer diffusers read `dtype` (and still accept `torch_dtype`, deprecated); 0.35 and older
    read only `torch_dtype` and silently ignore an unknown `dtype`, which loads every weight in
    float32. The signature is `(path, **kwargs)` in both, so the source is what tells them
    apart: the keyword the method pops from its kwargs.
    """
    parameters = inspect.signature(from_pretrained).parameters
    for name in ("dtype", "torch_dtype"):
        if name in parameters:
            return name
    try:
        source = inspect.getsource(from_pretrained)
    except (OSError, TypeError):  # no source to read: `torch_dtype` is read until 1.0
        major = int(diffusers.__version__.split(".")[0])
        return "dtype" if major >= 1 else "torch_dtype"
    return "dtype" if re.search(r"""kwargs\.pop\(\s*["']dtype["']""", source) else "torch_dtype"


def _as_float_pixels(image: Any) -> np.ndarray:
    """One pipeline output image as H x W x C floats in [0, 1], whatever its type."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):  # C x H x W
        return image.detach().float().cpu().permute(1, 2, 0).numpy()
    return np.asarray(image, dtype=np.float32)


def _pipeline_size(width: int, height: int) -> tuple[int, int]:
    def rounded(value: int) -> int:
        return max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)

    return rounded(width), rounded(height)


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _exception_error(error: Exception) -> BackendError:
    if isinstance(error, BackendError):
        return error
    detail = f"{type(error).__name__}: {error}"[:500]
    if _is_out_of_memory(error):
        return TransientBackendError("exception", detail)
    return PermanentBackendError("exception", detail)


class DiffusersBackend:
    """A diffusers pipeline as an image generator or an instruction editor."""

    def __init__(self, config: DiffusersBackendConfig) -> None:
        if config.pipeline is not None and config.pipeline not in PIPELINES:
            raise BackendSetupError(_unknown_pipeline_message(config.pipeline, config.model))
        self.config = config
        self._pipeline: Any = None
        self._pipeline_name: str | None = config.pipeline
        # Output size -> the largest batch tried at once, lowered when a call of that size runs
        # out of memory (by a half each time), so that later calls do not fail the same way.
        self.batch_limits: dict[tuple[int, int], int] = {}
        self._lora_digests: dict[tuple[str, str | None], str | None] = {}
        # Loading, and calling (a pipeline's scheduler keeps per-call state), one at a time.
        self._lock = threading.RLock()

    # -- protocols -----------------------------------------------------------------------

    def info(self) -> CallInfo:
        config = self.config
        try:
            pipeline = self.pipeline_name()
        except Exception:  # an unreadable model is reported by the calls, not here
            pipeline = config.pipeline
        return CallInfo(
            backend="diffusers",
            model=config.model,
            params={
                "pipeline": pipeline,
                "revision": config.revision,
                "dtype": config.dtype,
                "steps": config.steps,
                "guidance": config.guidance,
                "loras": [
                    {
                        "path": lora.path,
                        "weight": lora.weight,
                        "weight_name": lora.weight_name,
                        "digest": self._lora_digest(lora.path, lora.weight_name),
                    }
                    for lora in config.loras
                ],
                "device": config.device,
                "cpu_offload": config.cpu_offload,
                "call_kwargs": config.call_kwargs,
            },
        )

    def _lora_digest(self, path: str, weight_name: str | None) -> str | None:
        """The content of a local LoRA's weights, so a LoRA retrained into the same folder is
        another model to the request cache (a bench or run never serves the old one's edits);
        None for a hub id, whose identity is its name. Read once per backend."""
        if (path, weight_name) not in self._lora_digests:
            self._lora_digests[(path, weight_name)] = weights_digest(path, weight_name)
        return self._lora_digests[(path, weight_name)]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[bytes | BackendError]:
        requests = list(requests)
        refused = self._refusal("generate", len(requests))
        if refused is not None:
            return refused
        groups: dict[tuple[int, int], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.width, request.height), []).append(index)
        results: list[bytes | BackendError] = [PermanentBackendError("not_run")] * len(requests)
        for size, indices in groups.items():
            items = [(requests[i].prompt, None, requests[i].seed) for i in indices]
            for index, result in zip(indices, self._run_group(items, size)):
                results[index] = result
        return results

    def edit(self, requests: Sequence[EditRequest]) -> list[bytes | BackendError]:
        requests = list(requests)
        refused = self._refusal("edit", len(requests))
        if refused is not None:
            return refused
        results: list[bytes | BackendError] = [PermanentBackendError("not_run")] * len(requests)
        groups: dict[tuple[int, int], list[tuple[int, Image.Image]]] = {}
        for index, request in enumerate(requests):
            try:
                with Image.open(io.BytesIO(request.image)) as opened:
                    image = opened.convert("RGB")
            except Exception as error:
                results[index] = PermanentBackendError("bad_input", f"unreadable image: {error}")
                continue
            groups.setdefault(image.size, []).append((index, image))
        for size, members in groups.items():
            items = [(requests[i].instruction, image, requests[i].seed) for i, image in members]
            for (index, _), result in zip(members, self._run_group(items, size)):
                results[index] = result
        return results

    # -- loading -------------------------------------------------------------------------

    def pipeline_name(self) -> str:
        """The pipeline class: the config's, or `_class_name` of the model's model_index.json."""
        if self._pipeline_name is None:
            index = diffusers.DiffusionPipeline.load_config(
                self.config.model, revision=self.config.revision
            )
            self._pipeline_name = str(index.get("_class_name"))
        return self._pipeline_name

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline, loaded on first use. A model that cannot load
        (missing folder or weights, unknown pipeline class, LoRA or placement failure) raises
        `BackendSetupError`, which stops a run with its message: no call could work."""
        with self._lock:
            if self._pipeline is None:
                try:
                    self._pipeline = self._load()
                except BackendSetupError:
                    raise
                except Exception as error:
                    raise BackendSetupError(
                        f"cannot load diffusers model {self.config.model}: "
                        f"{type(error).__name__}: {error}"
                    ) from error
            return self._pipeline

    def _load(self) -> Any:
        config = self.config
        name = self.pipeline_name()
        if name not in PIPELINES:
            raise BackendSetupError(_unknown_pipeline_message(name, config.model))
        log.info("loading %s %s (%s) on %s", name, config.model, config.dtype, config.device)
        load = getattr(diffusers, name).from_pretrained
        pipeline = load(
            config.model,
            revision=config.revision,
            **{dtype_keyword(load): getattr(torch, config.dtype)},
        )
        if config.loras:
            names = []
            for number, lora in enumerate(config.loras):
                adapter = f"lora_{number}"
                try:
                    pipeline.load_lora_weights(
                        lora.path, weight_name=lora.weight_name, adapter_name=adapter
                    )
                except Exception as error:
                    raise BackendSetupError(
                        f"cannot load LoRA {lora.path} into {config.model}: "
                        f"{type(error).__name__}: {error}"
                    ) from error
                names.append(adapter)
            pipeline.set_adapters(names, adapter_weights=[lora.weight for lora in config.loras])
        if config.cpu_offload == "model":
            pipeline.enable_model_cpu_offload(device=config.device)
        elif config.cpu_offload == "sequential":
            pipeline.enable_sequential_cpu_offload(device=config.device)
        else:
            pipeline.to(config.device)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _refusal(self, task: str, count: int) -> list[bytes | BackendError] | None:
        """Per-item ``unsupported`` errors when the pipeline does not do `task` (known from
        model_index.json, without loading weights); otherwise loads the pipeline (raising
        `BackendSetupError` if it cannot) and returns None."""
        try:
            does = PIPELINES.get(self.pipeline_name(), task)
        except Exception as error:
            raise BackendSetupError(
                f"cannot read the pipeline class of diffusers model {self.config.model} "
                f"(model_index.json): {type(error).__name__}: {error}"
            ) from error
        if does != task:
            kind = "text-to-image" if does == "generate" else "instruction editing"
            error = PermanentBackendError(
                "unsupported",
                f"{self.pipeline_name()} ({self.config.model}) does {kind}, it cannot {task}",
            )
            return [error] * count
        self.pipeline  # noqa: B018 - loads it; an unknown pipeline class fails here
        return None

    # -- calling -------------------------------------------------------------------------

    def _run_group(
        self, items: list[tuple[str, Image.Image | None, int]], size: tuple[int, int]
    ) -> list[bytes | BackendError]:
        """Same-size items (prompt, input image or None, seed): one call per group (or per
        item where the family needs it), in batches of at most `batch_limits[size]`. A call
        that runs out of memory is split in halves (and the limit lowered); one that fails
        otherwise is retried item by item once."""
        if self.pipeline_name() in ONE_REQUEST_PER_CALL:
            return [result for item in items for result in self._call_or_error([item], size)]
        limit = self.batch_limits.get(size, len(items))
        if len(items) > limit:
            return [
                result
                for start in range(0, len(items), limit)
                for result in self._run_group(items[start : start + limit], size)
            ]
        try:
            return self._call(items, size)
        except Exception as error:
            self._free_memory(error)
            if len(items) == 1:
                return [_exception_error(error)]
            if _is_out_of_memory(error):
                self.batch_limits[size] = (len(items) + 1) // 2
                log.warning(
                    "diffusers batch of %d at %dx%d ran out of memory; batches of this size "
                    "run %d at a time from now on",
                    len(items),
                    *size,
                    self.batch_limits[size],
                )
                return self._run_group(items, size)
            log.warning(
                "diffusers batch of %d failed (%s: %s); retrying item by item",
                len(items),
                type(error).__name__,
                error,
            )
            return [result for item in items for result in self._call_or_error([item], size)]

    def _call_or_error(
        self, items: list[tuple[str, Image.Image | None, int]], size: tuple[int, int]
    ) -> list[bytes | BackendError]:
        try:
            return self._call(items, size)
        except Exception as error:
            self._free_memory(error)
            return [_exception_error(error)] * len(items)

    def _call(
        self, items: list[tuple[str, Image.Image | None, int]], size: tuple[int, int]
    ) -> list[bytes | BackendError]:
        """One pipeline call; raises what the pipeline raises."""
        config = self.config
        width, height = _pipeline_size(*size)
        arguments: dict[str, Any] = {}
        if config.steps is not None:
            arguments["num_inference_steps"] = config.steps
        arguments.update(
            family_arguments(self.pipeline_name(), width, height, len(items), config.guidance)
        )
        arguments.update(config.call_kwargs)
        arguments.update(
            prompt=[prompt for prompt, _, _ in items],
            generator=[torch.Generator(device="cpu").manual_seed(seed) for _, _, seed in items],
            num_images_per_prompt=1,
            output_type="np",
            return_dict=True,
        )
        if items[0][1] is not None:
            arguments["image"] = [image for _, image, _ in items]
        with self._lock:
            output = self.pipeline(**arguments)
        images = output.images
        if len(images) != len(items):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(items)} prompts")
        flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(items)
        results: list[bytes | BackendError] = []
        for image, nsfw in zip(images, flagged):
            pixels = _as_float_pixels(image)
            reason = "safety" if nsfw else check_image(pixels)
            if reason is not None:
                results.append(PermanentBackendError(reason, _ERROR_DETAILS[reason]))
            else:
                results.append(encode_png(pixels, size))
        return results

    @staticmethod
    def _free_memory(error: Exception) -> None:
        """After an out-of-memory error, release what the failed call left allocated."""
        if _is_out_of_memory(error):
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _unknown_pipeline_message(name: str, model: str) -> str:
    return (
        f"unsupported diffusers pipeline {name!r} for {model}; supported: "
        f"{', '.join(PIPELINES)} (set `pipeline:` in the model's config to one of them)"
    )


__all__ = [
    "PIPELINES",
    "DiffusersBackend",
    "check_image",
    "encode_png",
    "family_arguments",
]


def weights_digest(path: str, weight_name: str | None = None) -> str | None:
    """SHA-256 over the names and bytes of a local LoRA's weight files (a file, or the
    `weight_name` file or every *.safetensors / *.bin file of a folder); None when `path` is
    not on this machine (a hub id) or holds no such file: loading it is what reports that,
    as for an unreadable model."""
    import hashlib
    from pathlib import Path

    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = [root / weight_name] if weight_name else sorted(root.glob("*.safetensors"))
        files = files or sorted(root.glob("*.bin"))
    else:
        return None
    if not files or not all(file.is_file() for file in files):
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
