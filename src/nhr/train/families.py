"""What differs between the instruction editors `nhr train lora` fine-tunes: how the
instruction is encoded, how images become latents, and how the transformer is called with the
clean source latents as context beside the noisy target latents.

Both families use the pipeline's own helpers (prompt encoding, VAE normalisation, 2x2 latent
packing), so a LoRA trained here sees exactly the inputs the pipeline gives it when it edits.

- FLUX.1 Kontext (`FluxKontextPipeline`): CLIP pooled + T5 text embeddings; latents
  `(z - shift) * scale`; target and source tokens concatenated along the sequence, the source's
  position ids marked with 1 in their first channel; guidance embedding when the model has one.
- Qwen-Image-Edit (`QwenImageEditPipeline`): the instruction and the source image go through
  the Qwen2.5-VL text encoder together; 5-D video-VAE latents normalised per channel; the
  sequence layout is given as `img_shapes` (target, then source).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nhr.storage import first_line
from nhr.train.errors import TrainError

# Linear layers a LoRA adapts, by module-name suffix; only those the model has are used.
# Kontext: attention of both streams and the feed-forwards (as diffusers' Kontext LoRA
# example); Qwen-Image: attention of both streams.
QWEN_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
KONTEXT_TARGETS = (
    *QWEN_TARGETS,
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
)

QWEN_EDIT_DIFFUSERS = "0.35.0"  # the first diffusers release with QwenImageEditPipeline


@dataclass
class Batch:
    """One step's inputs after the frozen encoders: instruction conditioning, and the target
    (edited) and source latents, unpacked."""

    text: dict[str, Any]
    target: torch.Tensor
    source: torch.Tensor


class _Family:
    """What both families share: the guidance value for models with a guidance embedding, and
    how the transformer's output for the target tokens becomes latents again."""

    def __init__(self, guidance: float) -> None:
        self.guidance = guidance

    def _guidance(self, pipe: Any, noisy: torch.Tensor, count: int) -> torch.Tensor | None:
        if not getattr(pipe.transformer.config, "guidance_embeds", False):
            return None  # `pipe.transformer`, since `transformer` may be DDP-wrapped
        return torch.full([count], self.guidance, device=noisy.device, dtype=torch.float32)

    @staticmethod
    def _unpack(
        pipe: Any, output: torch.Tensor, tokens: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        scale = pipe.vae_scale_factor
        return pipe._unpack_latents(
            output[:, : tokens.shape[1]], height * scale, width * scale, scale
        )


class KontextFamily(_Family):
    pipeline_class = "FluxKontextPipeline"
    targets = KONTEXT_TARGETS
    default_max_sequence_length = 512

    def encode(
        self,
        pipe: Any,
        instructions: list[str],
        sources: list[Any],
        pixels: tuple[torch.Tensor, torch.Tensor],
        max_sequence_length: int,
    ) -> Batch:
        device = pixels[0].device
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=instructions,
            prompt_2=None,
            device=device,
            max_sequence_length=max_sequence_length,
        )
        source, target = (pipe._encode_vae_image(p, generator=None) for p in pixels)
        text = {"prompt_embeds": prompt_embeds, "pooled": pooled, "text_ids": text_ids}
        return Batch(text, target, source)

    def predict(
        self, pipe: Any, transformer: Any, noisy: torch.Tensor, batch: Batch, sigmas: torch.Tensor
    ) -> torch.Tensor:
        count, channels, height, width = noisy.shape
        dtype = batch.text["prompt_embeds"].dtype
        tokens = pipe._pack_latents(noisy, count, channels, height, width)
        context = pipe._pack_latents(batch.source, count, channels, height, width)
        target_ids = pipe._prepare_latent_image_ids(
            count, height // 2, width // 2, noisy.device, dtype
        )
        source_ids = target_ids.clone()
        source_ids[..., 0] = 1  # marks the conditioning image, as the pipeline does
        output = transformer(
            hidden_states=torch.cat([tokens, context], dim=1).to(dtype),
            timestep=sigmas.to(dtype),  # the pipeline passes timestep / 1000, i.e. sigma
            guidance=self._guidance(pipe, noisy, count),
            pooled_projections=batch.text["pooled"],
            encoder_hidden_states=batch.text["prompt_embeds"],
            txt_ids=batch.text["text_ids"],
            img_ids=torch.cat([target_ids, source_ids], dim=0),
            return_dict=False,
        )[0]
        return self._unpack(pipe, output, tokens, height, width)


class QwenEditFamily(_Family):
    pipeline_class = "QwenImageEditPipeline"
    targets = QWEN_TARGETS
    default_max_sequence_length = 1024

    def encode(
        self,
        pipe: Any,
        instructions: list[str],
        sources: list[Any],
        pixels: tuple[torch.Tensor, torch.Tensor],
        max_sequence_length: int,
    ) -> Batch:
        device = pixels[0].device
        # the VL encoder reads the source image with the instruction, as when the pipeline edits
        prompt_embeds, mask = pipe.encode_prompt(
            prompt=instructions,
            image=sources,
            device=device,
            max_sequence_length=max_sequence_length,
        )
        source, target = (pipe._encode_vae_image(p.unsqueeze(2), generator=None) for p in pixels)
        return Batch({"prompt_embeds": prompt_embeds, "mask": mask}, target, source)

    def predict(
        self, pipe: Any, transformer: Any, noisy: torch.Tensor, batch: Batch, sigmas: torch.Tensor
    ) -> torch.Tensor:
        count, channels, _, height, width = noisy.shape
        dtype = batch.text["prompt_embeds"].dtype
        tokens = pipe._pack_latents(noisy, count, channels, height, width)
        context = pipe._pack_latents(batch.source, count, channels, height, width)
        shape = (1, height // 2, width // 2)
        output = transformer(
            hidden_states=torch.cat([tokens, context], dim=1).to(dtype),
            timestep=sigmas.to(dtype),
            guidance=self._guidance(pipe, noisy, count),
            encoder_hidden_states_mask=batch.text["mask"],
            encoder_hidden_states=batch.text["prompt_embeds"],
            img_shapes=[[shape, shape]] * count,
            return_dict=False,
        )[0]
        return self._unpack(pipe, output, tokens, height, width)


FAMILIES = {"FluxKontextPipeline": KontextFamily, "QwenImageEditPipeline": QwenEditFamily}


def pipeline_class_of(model: str) -> str:
    """The pipeline class named in the model's model_index.json (a folder or a hub id)."""
    import diffusers

    try:
        index = diffusers.DiffusionPipeline.load_config(model)
    except Exception as error:
        raise TrainError(f"cannot read {model}/model_index.json: {first_line(error)}") from error
    return str(index.get("_class_name"))


def family_for(model: str, guidance: float) -> Any:
    """The family of `model`; a clear error for any other pipeline or an old diffusers."""
    import diffusers

    name = pipeline_class_of(model)
    if name.startswith("QwenImageEdit") and not hasattr(diffusers, "QwenImageEditPipeline"):
        raise TrainError(
            f"{model} is a {name}; training it needs diffusers >= {QWEN_EDIT_DIFFUSERS} "
            f"(installed: {diffusers.__version__}): pip install -U 'diffusers>={QWEN_EDIT_DIFFUSERS}'"
        )
    if name not in FAMILIES:
        raise TrainError(
            f"{model} is a {name}; `nhr train lora` fine-tunes instruction editors: "
            f"{', '.join(FAMILIES)}"
        )
    return FAMILIES[name](guidance)


def lora_targets(transformer: Any, targets: tuple[str, ...]) -> list[str]:
    names = [name for name, _ in transformer.named_modules()]
    present = [t for t in targets if any(n == t or n.endswith(f".{t}") for n in names)]
    if not present:
        raise TrainError("the transformer has none of the layers a LoRA adapts here")
    return present
