"""Tiny random-weight Flux pipelines saved as ordinary diffusers folders, for offline tests.

`build_tiny_flux(folder)` writes a FluxPipeline (text to image) and `build_tiny_flux_kontext`
a FluxKontextPipeline (instruction editing) made of the same tiny components: a 1-layer
transformer, two small text encoders, a one-block VAE and tokenizers built from an in-memory
vocabulary. Each folder has a model_index.json naming its class, so
`DiffusionPipeline.from_pretrained(folder)` loads it exactly as it would a hub id. Building
takes well under a second (after the imports); the weights depend only on `seed`.
`build_tiny_flux_lora(folder)` writes a random LoRA for that transformer.

The VAE has a single block, so its scale factor is 1: images are denoised at pixel
resolution and any even width and height work.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)


def _byte_characters() -> list[str]:
    """The 256 printable characters GPT-2 style byte-level BPE uses for the 256 bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """Character-level byte BPE without merges: any text tokenizes, 514 tokens."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _byte_characters():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A unigram vocabulary of single characters (with and without the word marker)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(char, -3.0), ("▁" + char, -3.5)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def tiny_flux_components(seed: int = 0) -> dict:
    """The seven components of a Flux pipeline, random and tiny (about 120k parameters).

    The configs must agree: transformer in_channels = 4 * VAE latent channels (2x2 packing),
    joint_attention_dim = T5 d_model, pooled_projection_dim = CLIP hidden size,
    sum(axes_dims_rope) = attention_head_dim, and CLIP's eos id = the tokenizer's.
    """
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            max_position_embeddings=77,
            hidden_act="gelu",
        )
    )
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    return {
        "transformer": transformer,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
    }


def build_tiny_flux(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random FluxPipeline (text to image) to `folder`; return the folder."""
    folder = Path(folder)
    FluxPipeline(**tiny_flux_components(seed)).save_pretrained(folder)
    return folder


def build_tiny_flux_kontext(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random FluxKontextPipeline (instruction editing) to `folder`."""
    folder = Path(folder)
    FluxKontextPipeline(**tiny_flux_components(seed)).save_pretrained(folder)
    return folder


def build_tiny_flux_lora(folder: str | Path, seed: int = 1) -> Path:
    """Save a random LoRA (rank 2, attention projections) for the tiny Flux transformer in
    diffusers' format (pytorch_lora_weights.safetensors), loadable by `load_lora_weights`."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    transformer = tiny_flux_components()["transformer"]
    torch.manual_seed(seed)
    transformer.add_adapter(
        LoraConfig(
            r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False
        )
    )
    FluxPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(transformer)
    )
    return folder
