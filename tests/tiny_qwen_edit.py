"""A tiny random-weight QwenImageEditPipeline built in memory, for offline CPU tests.

Qwen2-VL processors cannot be built without torchvision in transformers 5.x (their video
processor needs it), so `TinyVLProcessor` stands in: the Qwen2-VL image processor, the
tokenizer, and the expansion of each `<|image_pad|>` into one token per merged image patch,
which is what the real processor does for images. The pipeline is returned as an object, not
a folder (the stand-in processor cannot be saved as the real one).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageTransformer2DModel,
)
from tiny_diffusers import _byte_characters
from transformers import (
    BatchFeature,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)

SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


class TinyVLProcessor:
    def __init__(self, tokenizer: Qwen2Tokenizer, image_processor: Qwen2VLImageProcessorPil):
        self.tokenizer, self.image_processor = tokenizer, image_processor

    def __call__(self, text, images=None, padding=True, return_tensors="pt"):
        features = {}
        if images is not None:
            features = dict(self.image_processor(images=images, return_tensors="pt"))
            counts = iter(
                int(grid.prod()) // self.image_processor.merge_size**2
                for grid in features["image_grid_thw"]
            )
            text = [t.replace("<|image_pad|>", "\0" * next(counts)) for t in text]
            text = [t.replace("\0", "<|image_pad|>") for t in text]
        encoded = self.tokenizer(text, padding=padding, return_tensors=return_tensors)
        return BatchFeature({**encoded, **features})


def tiny_qwen_edit_pipeline(seed: int = 0) -> QwenImageEditPipeline:
    torch.manual_seed(seed)
    vocab = {character: i for i, character in enumerate(_byte_characters())}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIALS}
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=37,
        num_heads=4,
        out_hidden_size=32,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[0],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config=vision_config,
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
    ).eval()
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    return QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=TinyVLProcessor(tokenizer, image_processor),
        transformer=transformer,
    )
