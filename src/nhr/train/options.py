"""The options of `nhr train lora`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainOptions:
    base: str  # a FLUX.1 Kontext or Qwen-Image-Edit pipeline: hub id or local folder
    data: str  # a finished run directory (path or URL) or an `hf` export folder
    output: str  # a local folder: the adapter, checkpoints/, validation/
    steps: int = 1000
    rank: int = 16
    lr: float = 1e-4
    batch_size: int = 1
    resolution: int = 512  # square training size in pixels (a multiple of 16)
    validate_every: int = 0  # 0: no validation grids
    validation_count: int = 4
    validation_steps: int = 28  # sampling steps of the validation edits
    checkpoint_every: int = 250
    resume: bool = False
    seed: int = 0
    mixed_precision: str = "bf16"  # no, fp16 or bf16: frozen weights in that dtype
    gradient_checkpointing: bool = True
    guidance: float = 1.0  # Kontext's guidance embedding while training
    max_sequence_length: int | None = None  # the family's default when None
    warmup_steps: int = 0
    device: str | None = None  # "cpu" forces the CPU; otherwise accelerate decides
    progress: bool = False  # print the loss of every step

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        from nhr.train.errors import TrainError

        if self.steps < 1 or self.rank < 1 or self.batch_size < 1:
            raise TrainError("--steps, --rank and --batch-size must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainError(f"--lr must be a positive number, not {self.lr}")
        if self.validate_every and self.validation_count < 1:
            raise TrainError("--validation-count must be at least 1 with --validate-every")
        if self.validation_steps < 1 or self.warmup_steps < 0:
            raise TrainError("--validation-steps must be at least 1 and --warmup-steps >= 0")
        if self.max_sequence_length is not None and self.max_sequence_length < 1:
            raise TrainError("--max-sequence-length must be at least 1")
        if not math.isfinite(self.guidance):
            raise TrainError(f"--guidance must be a number, not {self.guidance}")
        if self.resolution < 16 or self.resolution % 16:
            raise TrainError(f"--resolution must be a multiple of 16, not {self.resolution}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise TrainError("--mixed-precision is no, fp16 or bf16")
        if "://" in self.output:
            raise TrainError("--output must be a local folder (checkpoints are written there)")
        if self.checkpoint_every < 1 or self.validate_every < 0:
            raise TrainError("--checkpoint-every must be >= 1 and --validate-every >= 0")
