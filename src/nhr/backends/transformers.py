"""Local LLMs and VLMs from Hugging Face transformers: `chat` (TextModel) and `ask` (VisionModel).

The model loads on the first call, once per backend instance (the executor keeps one instance
per model config and worker); nothing from torch or transformers is imported before that.

Text (`chat`): AutoTokenizer + AutoModelForCausalLM; the prompt is the tokenizer's chat
template over the request's messages. A checkpoint that is only an image-text-to-text model
(Qwen2.5-VL, LLaVA...) answers text requests through its vision components instead, so one
local VLM can serve every text and vision role from a single copy in memory.

Vision (`ask`): AutoModelForImageTextToText + AutoProcessor; the user turn holds one image
placeholder per image, images first, then the text. Images are decoded from PNG to RGB and
downscaled to at most `max_image_pixels`.

Placement. dtype "auto" keeps the checkpoint's dtype. device "auto" loads with
device_map="auto" (spread over the GPUs) when CUDA and accelerate are available, else on the
CPU; an explicit device ("cuda:1", "cpu") is passed as the device_map. attn_implementation and
trust_remote_code are passed through to every from_pretrained.

Processors. `AutoProcessor` works for every family whose processor builds in this
environment: LLaVA, Idefics3, PaliGemma, Gemma3... and, with torchvision installed, Qwen-VL,
SmolVLM, InternVL, LLaVA-OneVision. In transformers 5.x the Qwen2-VL / Qwen2.5-VL / Qwen3-VL
processors also build a video processor that needs torchvision. Without it, the backend builds
an image-only stand-in from the parts that do load (the PIL image processor, the tokenizer and
the processor's chat template) and expands each image placeholder to the number of tokens its
image gives, as the real processor does: this supports image processors that report
`image_grid_thw` and `merge_size` (the Qwen-VL families). Any other processor that fails to
build raises an error that names the missing package.

Batching. A call is one `generate` over all its requests, left-padded. Decoding is greedy;
requests with a temperature > 0 are sampled, each row from its own torch generator seeded with
the request's seed, so a sampled answer does not depend on its batch mates. `max_new_tokens` is
min(request.max_tokens, config.max_new_tokens); a batch generates up to its largest limit and
each answer is cut to its own. Only the new tokens are decoded, without special tokens.

Errors. If a batch runs out of memory, it is split in halves and later calls run batches of at
most that size (`batch_limit`); if it raises anything else, its requests are retried one by
one. A request that still fails becomes a `TransientBackendError("exception", "out of memory
...")` for an out-of-memory error or a `PermanentBackendError(<exception type>, ...)`
otherwise; an unreadable image fails only its own request. Loading problems (missing packages,
a bad model id) are raised for the call.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nhr.backends.base import (
    BackendError,
    BackendSetupError,
    CallInfo,
    MissingExtraError,
    PermanentBackendError,
    TextRequest,
    TransientBackendError,
    VisionRequest,
)
from nhr.backends.configs import TransformersBackendConfig

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'nhr[transformers]'"
QWEN_IMAGE_TOKEN = "<|image_pad|>"


def fit_image(image: Any, max_pixels: int) -> Any:
    """`image` (PIL) downscaled, aspect kept, so that width * height <= max_pixels."""
    from PIL import Image

    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    new_width = max(1, int(width * scale))
    new_height = max(1, int(height * scale))
    while new_width * new_height > max_pixels:  # guard against rounding up
        if new_width >= new_height:
            new_width -= 1
        else:
            new_height -= 1
    return image.resize((new_width, new_height), Image.Resampling.LANCZOS)


def decode_image(data: bytes, max_pixels: int) -> Any:
    """PNG (or any PIL-readable) bytes -> RGB PIL image within max_pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    return fit_image(rgb, max_pixels)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is torch's (CUDA) OutOfMemoryError or says it ran out of memory."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def item_error(error: Exception) -> BackendError:
    """What a request that raised `error` returns."""
    if isinstance(error, BackendError):
        return error
    text = str(error)
    if is_out_of_memory(error):
        return TransientBackendError("exception", f"out of memory: {text[:300]}")
    return PermanentBackendError(type(error).__name__, text[:500])


def _import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as error:
        raise MissingExtraError(
            f"the transformers backend needs torch and transformers ({error}); "
            f"install them with: {INSTALL_HINT}"
        ) from error
    return torch, transformers


@dataclass
class _Loaded:
    """A loaded model with what encodes its prompts and decodes its answers."""

    model: Any
    tokenizer: Any  # decodes, pads; its chat template serves text-only models
    processor: Any | None  # None for a text-only model
    device: Any  # where inputs go (the input embeddings' device)


@dataclass
class _Prepared:
    """One request turned into what generation needs."""

    messages: list[dict[str, Any]]
    images: list[Any]
    max_new_tokens: int
    temperature: float
    seed: int | None


class SeededSampler:
    """A logits processor that samples the rows with a temperature > 0, each from its own
    torch generator seeded with its request's seed, and leaves the greedy rows alone.

    `generate` runs greedy search over its output: a sampled row keeps only the token it drew,
    so greedy search picks that one. Its draws therefore depend on its own seed only.
    """

    def __init__(self, temperatures: list[float], seeds: list[int | None]) -> None:
        self.temperatures = temperatures
        self.seeds = seeds
        self.generators: dict[int, Any] = {}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.clone()
        for row, temperature in enumerate(self.temperatures):
            if temperature <= 0:
                continue
            if row not in self.generators:
                generator = torch.Generator(device=scores.device)
                if self.seeds[row] is None:
                    generator.seed()
                else:
                    generator.manual_seed(self.seeds[row])
                self.generators[row] = generator
            probabilities = torch.softmax(scores[row].float() / temperature, dim=-1)
            token = torch.multinomial(probabilities, 1, generator=self.generators[row])
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


class ImageGridProcessor:
    """Stand-in for a Qwen-VL style processor when `AutoProcessor` cannot build one (its video
    processor needs torchvision): the image processor, the tokenizer and the chat template,
    expanding each image placeholder to grid_t * grid_h * grid_w / merge_size**2 tokens."""

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        chat_template: str,
        image_token: str,
        mm_token_type_ids: bool,
    ) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.mm_token_type_ids = mm_token_type_ids

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, **kwargs
        )

    def __call__(
        self,
        text: list[str],
        images: list[list[Any]] | None = None,
        return_tensors: str = "pt",
        **tokenizer_kwargs: Any,
    ) -> Any:
        from transformers import BatchFeature

        flat = [image for sample in images or [] for image in sample]
        image_inputs: dict[str, Any] = {}
        counts: list[int] = []
        if flat:
            image_inputs = dict(self.image_processor(images=flat, return_tensors=return_tensors))
            merge = self.image_processor.merge_size**2
            counts = [int(grid.prod()) // merge for grid in image_inputs["image_grid_thw"]]
        remaining = iter(counts)
        expanded = []
        for sample in text:
            pieces = sample.split(self.image_token)
            rebuilt = pieces[0]
            for piece in pieces[1:]:
                count = next(remaining, None)
                if count is None:
                    raise ValueError("more image placeholders than images")
                rebuilt += self.image_token * count + piece
            expanded.append(rebuilt)
        if next(remaining, None) is not None:
            raise ValueError("more images than image placeholders")
        encoded = self.tokenizer(expanded, return_tensors=return_tensors, **tokenizer_kwargs)
        data = {**encoded, **image_inputs}
        if self.mm_token_type_ids:
            data["mm_token_type_ids"] = (encoded["input_ids"] == self.image_token_id).long()
        return BatchFeature(data)


class TransformersBackend:
    """TextModel and VisionModel on a local transformers checkpoint (hub id or folder)."""

    def __init__(self, config: TransformersBackendConfig) -> None:
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingExtraError(
                f"the transformers backend needs {' and '.join(missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_HINT}"
            )
        self.config = config
        self._lock = threading.RLock()
        self._text: _Loaded | None = None
        self._vision: _Loaded | None = None
        self._counters = {"input_tokens": 0.0, "output_tokens": 0.0}
        # The largest batch generated at once; lowered (by a half each time) when a batch runs
        # out of memory, so that later calls do not fail the same way. None: no limit.
        self.batch_limit: int | None = None

    # -- protocol ---------------------------------------------------------------------------

    def info(self) -> CallInfo:
        config = self.config
        return CallInfo(
            backend="transformers",
            model=config.model,
            params={
                "revision": config.revision,
                "dtype": config.dtype,
                "device": config.device,
                "max_new_tokens": config.max_new_tokens,
                "max_image_pixels": config.max_image_pixels,
            },
        )

    def usage(self) -> dict[str, float]:
        """Tokens read and written so far (prompt tokens include image tokens)."""
        return dict(self._counters)

    def chat(self, requests: Sequence[TextRequest]) -> list[str | BackendError]:
        with self._lock:
            loaded = self._loading(self._text_model)
            return self._answer(loaded, [self._prepare_text(r, loaded) for r in requests])

    def ask(self, requests: Sequence[VisionRequest]) -> list[str | BackendError]:
        with self._lock:
            loaded = self._loading(self._vision_model)
            return self._answer(loaded, [self._prepare_vision(r) for r in requests])

    def _loading(self, load: Any) -> _Loaded:
        """Load (once); a model that cannot be loaded stops the run with a clear message,
        instead of failing every item of every batch."""
        try:
            return load()
        except (MissingExtraError, BackendSetupError):
            raise
        except (OSError, ValueError, KeyError) as error:
            raise BackendSetupError(
                f"cannot load transformers model {self.config.model!r}: {error}"
            ) from error

    # -- requests ---------------------------------------------------------------------------

    def _limit(self, max_tokens: int) -> int:
        return max(1, min(max_tokens, self.config.max_new_tokens))

    def _prepare_text(self, request: TextRequest, loaded: _Loaded) -> _Prepared:
        if loaded.processor is None:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
        else:  # a VLM answering text: processors expect content as a list of parts
            messages = [
                {"role": m.role, "content": [{"type": "text", "text": m.content}]}
                for m in request.messages
            ]
        return _Prepared(
            messages, [], self._limit(request.max_tokens), request.temperature, request.seed
        )

    def _prepare_vision(self, request: VisionRequest) -> _Prepared | BackendError:
        try:
            images = [decode_image(data, self.config.max_image_pixels) for data in request.images]
        except Exception as error:  # an unreadable image fails its own request only
            return PermanentBackendError("bad_image", f"{type(error).__name__}: {error}")
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append(
                {"role": "system", "content": [{"type": "text", "text": request.system}]}
            )
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": request.prompt}]
        messages.append({"role": "user", "content": content})
        return _Prepared(
            messages, images, self._limit(request.max_tokens), request.temperature, request.seed
        )

    # -- generation -------------------------------------------------------------------------

    def _answer(
        self, loaded: _Loaded, prepared: list[_Prepared | BackendError]
    ) -> list[str | BackendError]:
        results: list[str | BackendError | None] = [
            item if isinstance(item, BackendError) else None for item in prepared
        ]
        todo = [i for i, item in enumerate(prepared) if not isinstance(item, BackendError)]
        self._answer_batches(loaded, prepared, todo, results)
        return results  # type: ignore[return-value]

    def _answer_batches(
        self,
        loaded: _Loaded,
        prepared: list[_Prepared | BackendError],
        todo: list[int],
        results: list[str | BackendError | None],
    ) -> None:
        """Answer `prepared[i]` for i in `todo` into `results`, in batches of at most
        `batch_limit`: a batch that runs out of memory is split in halves (and the limit
        lowered), one that fails otherwise is retried one by one."""
        if not todo:
            return
        limit = self.batch_limit or len(todo)
        if len(todo) > limit:
            for start in range(0, len(todo), limit):
                self._answer_batches(loaded, prepared, todo[start : start + limit], results)
            return
        try:
            for index, text in zip(todo, self._generate(loaded, [prepared[i] for i in todo])):
                results[index] = text
        except Exception as error:
            log.warning(
                "transformers batch of %d failed (%s: %s)", len(todo), type(error).__name__, error
            )
            self._free_memory()
            if len(todo) > 1 and is_out_of_memory(error):
                self.batch_limit = (len(todo) + 1) // 2  # out of memory: halve the batches
                self._answer_batches(loaded, prepared, todo, results)
            elif len(todo) == 1:
                results[todo[0]] = item_error(error)
            else:
                for index in todo:  # one by one, so one bad request fails alone
                    try:
                        results[index] = self._generate(loaded, [prepared[index]])[0]
                    except Exception as single_error:
                        self._free_memory()
                        results[index] = item_error(single_error)

    def _generate(self, loaded: _Loaded, batch: list[_Prepared]) -> list[str]:
        import torch

        encoder = loaded.processor or loaded.tokenizer
        texts = [
            encoder.apply_chat_template(item.messages, tokenize=False, add_generation_prompt=True)
            for item in batch
        ]
        if loaded.processor is None:
            inputs = loaded.tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            )
        else:
            with_images = any(item.images for item in batch)
            inputs = loaded.processor(
                text=texts,
                images=[item.images for item in batch] if with_images else None,
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
        inputs = inputs.to(loaded.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.model.dtype)
        options: dict[str, Any] = {
            "max_new_tokens": max(item.max_new_tokens for item in batch),
            "do_sample": False,
            "pad_token_id": loaded.tokenizer.pad_token_id,
        }
        if loaded.model.generation_config.eos_token_id is None:
            options["eos_token_id"] = loaded.tokenizer.eos_token_id
        if any(item.temperature > 0 for item in batch):
            from transformers import LogitsProcessorList

            sampler = SeededSampler(
                [item.temperature for item in batch], [item.seed for item in batch]
            )
            options["logits_processor"] = LogitsProcessorList([sampler])
        with torch.inference_mode():
            output = loaded.model.generate(**inputs, **options)
        prompt_length = inputs["input_ids"].shape[1]
        answers = []
        for row, item in enumerate(batch):
            tokens = output[row, prompt_length:][: item.max_new_tokens]
            answers.append(loaded.tokenizer.decode(tokens, skip_special_tokens=True).strip())
            if loaded.tokenizer.pad_token_id is not None:
                tokens = tokens[tokens != loaded.tokenizer.pad_token_id]
            self._counters["output_tokens"] += int(tokens.numel())
        self._counters["input_tokens"] += float(inputs["attention_mask"].sum())
        return answers

    def _free_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- loading ----------------------------------------------------------------------------

    def _text_model(self) -> _Loaded:
        if self._vision is not None:
            return self._vision
        if self._text is None:
            if self._is_vision_only():
                return self._vision_model()
            self._text = self._load_text()
        return self._text

    def _vision_model(self) -> _Loaded:
        if self._vision is None:
            self._vision = self._load_vision()
            if self._text is not None:  # the VLM now answers text requests too
                self._text = None
                self._free_memory()
        return self._vision

    def _source_kwargs(self, source: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.config.trust_remote_code}
        if source == self.config.model and self.config.revision is not None:
            kwargs["revision"] = self.config.revision
        return kwargs

    def _is_vision_only(self) -> bool:
        """Whether the checkpoint is an image-text-to-text model with no causal-LM class."""
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        )

        model_type = AutoConfig.from_pretrained(
            self.config.model, **self._source_kwargs(self.config.model)
        ).model_type
        return (
            model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
            and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        )

    def _model_kwargs(self, torch: Any, transformers: Any) -> dict[str, Any]:
        config = self.config
        kwargs = self._source_kwargs(config.model)
        dtype: Any = config.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
        version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
        kwargs["dtype" if version >= (4, 56) else "torch_dtype"] = dtype
        if config.device == "auto":
            has_accelerate = importlib.util.find_spec("accelerate") is not None
            use_gpu = torch.cuda.is_available() and has_accelerate
            kwargs["device_map"] = "auto" if use_gpu else "cpu"
        else:
            kwargs["device_map"] = config.device
        if config.attn_implementation is not None:
            kwargs["attn_implementation"] = config.attn_implementation
        return kwargs

    def _load_text(self) -> _Loaded:
        torch, transformers = _import_torch_transformers()
        config = self.config
        source = config.processor or config.model
        log.info("loading %s (text) with transformers", config.model)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            source, **self._source_kwargs(source)
        )
        if tokenizer.chat_template is None:
            raise ValueError(
                f"{source} has no chat template; use an instruction-tuned (chat) model, or set "
                "`processor` to a tokenizer that has one"
            )
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = transformers.AutoModelForCausalLM.from_pretrained(
            config.model, **self._model_kwargs(torch, transformers)
        ).eval()
        return _Loaded(model, tokenizer, None, model.get_input_embeddings().weight.device)

    def _load_vision(self) -> _Loaded:
        torch, transformers = _import_torch_transformers()
        config = self.config
        log.info("loading %s (vision) with transformers", config.model)
        processor = self._load_processor(transformers)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            config.model, **self._model_kwargs(torch, transformers)
        ).eval()
        return _Loaded(model, tokenizer, processor, model.get_input_embeddings().weight.device)

    def _load_processor(self, transformers: Any) -> Any:
        source = self.config.processor or self.config.model
        kwargs = self._source_kwargs(source)
        try:
            return transformers.AutoProcessor.from_pretrained(source, **kwargs)
        except Exception as error:
            if "torchvision" not in str(error).lower():
                raise
            reason = error
        try:
            processor = self._image_grid_processor(transformers, source, kwargs)
        except Exception as error:
            cause = str(reason).strip().split(". ")[0].rstrip(".")
            raise MissingExtraError(
                f"the processor of {source} cannot be built ({cause}). Install torchvision to "
                "match your torch (pip install torchvision). Without it, only processors that "
                "need no torchvision (LLaVA, Idefics3, PaliGemma, Gemma3...) and the Qwen-VL "
                "family (through an image-only stand-in) work; the stand-in failed here: "
                f"{type(error).__name__}: {error}"
            ) from error
        log.warning(
            "the processor of %s needs torchvision, which is not installed; using an image-only "
            "stand-in built from its image processor, tokenizer and chat template",
            source,
        )
        return processor

    def _image_grid_processor(
        self, transformers: Any, source: str, kwargs: dict[str, Any]
    ) -> ImageGridProcessor:
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

        model_config = transformers.AutoConfig.from_pretrained(
            self.config.model, **self._source_kwargs(self.config.model)
        )
        if type(model_config) not in PROCESSOR_MAPPING:
            raise ValueError(f"no processor class is registered for {model_config.model_type}")
        processor_class = PROCESSOR_MAPPING[type(model_config)]
        image_processor = transformers.AutoImageProcessor.from_pretrained(source, **kwargs)
        if not hasattr(image_processor, "merge_size"):
            raise ValueError(
                f"{type(image_processor).__name__} does not give image grids (not a Qwen-VL "
                "style image processor)"
            )
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
        processor_dict, _ = processor_class.get_processor_dict(source, **kwargs)
        chat_template = processor_dict.get("chat_template") or tokenizer.chat_template
        if not chat_template:
            raise ValueError(f"{source} has no chat template")
        image_token = getattr(tokenizer, "image_token", None) or QWEN_IMAGE_TOKEN
        if tokenizer.convert_tokens_to_ids(image_token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no image token {image_token!r}")
        return ImageGridProcessor(
            image_processor,
            tokenizer,
            chat_template,
            image_token,
            mm_token_type_ids=getattr(processor_class, "return_mm_token_type_ids", False),
        )
