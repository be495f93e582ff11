"""`nhr train lora`: fine-tune an instruction editor (FLUX.1 Kontext or Qwen-Image-Edit) with a
LoRA on a run's mined triplets, the way the NHR paper (arXiv 2507.14119) fine-tuned an editor on
its data. The source image is the context, the edited image the target, the instruction the
prompt.

    OUTPUT/pytorch_lora_weights.safetensors   the adapter (diffusers format)
    OUTPUT/nhr-train.json                     options, data, per-step losses
    OUTPUT/checkpoints/step-NNNNNNNN/          the last checkpoints (--resume continues there)
    OUTPUT/validation/step-NNNNNNNN.png        source | edited | model output grids

The adapter loads in a mining or benchmark config through the diffusers backend:

    editor:
      backend: diffusers
      model: black-forest-labs/FLUX.1-Kontext-dev
      loras: [{path: OUTPUT}]

This package imports torch, diffusers, peft and accelerate only when `train_lora` runs.
"""

from __future__ import annotations

from typing import Any

from nhr.train.errors import TrainError
from nhr.train.options import TrainOptions

__all__ = ["TrainError", "TrainOptions", "train_lora"]


def train_lora(options: TrainOptions) -> dict[str, Any]:
    """Train a LoRA as `options` say; returns the summary written to OUTPUT/nhr-train.json."""
    from nhr.backends.base import MissingExtraError

    options.check()
    try:
        from nhr.train import loop
    except ImportError as error:
        raise MissingExtraError(
            f"training needs torch, diffusers, peft and accelerate ({error}); install them "
            "with: pip install 'nhr[diffusers]'"
        ) from error
    return loop.train_lora(options)
