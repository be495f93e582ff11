"""Tiny random transformers models for tests, built in memory and saved to a folder, so that
`from_pretrained(folder)` loads them exactly like a hub id, offline and without torchvision.

- `build_tiny_llm`: a Qwen2 causal LM with a byte-level tokenizer and a ChatML template.
- `build_tiny_vlm`: LLaVA (CLIP vision tower + Qwen2 text model) with its full LlavaProcessor,
  which builds without torchvision.
- `build_tiny_qwen_vl`: Qwen2.5-VL saved the way hub repos ship it (tokenizer, image processor,
  processor chat template). Its `AutoProcessor` needs torchvision in transformers 5.x, so it
  exercises the backend's fallback processor where torchvision is missing.

`fixed_answer` makes greedy decoding answer exactly that text, whatever the prompt and images.
Zeroing the LM head alone is not enough: every step would tie and repeat the same token. So the
weights are set by hand instead: the answer is one added token A; every transformer block's
output projections (attention o_proj, MLP down_proj) are zeroed, so the last hidden state is
just the embedding of the current token; token A embeds along axis 1 and every other token
along axis 0; the LM head maps axis 0 to A and axis 1 to EOS. Greedy search therefore emits A
after any prompt, then EOS.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)

EOS = "<|im_end|>"
CHATML_SPECIALS = ["<|im_start|>", EOS]
QWEN_VISION_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
LLAVA_IMAGE = "<image>"

# ChatML; content is a string or a list of parts, an image part rendered as IMAGE_MARKUP.
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE_MARKUP"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT_TEMPLATE = _CHATML.replace("IMAGE_MARKUP", "")
LLAVA_TEMPLATE = _CHATML.replace("IMAGE_MARKUP", LLAVA_IMAGE + "\n")
QWEN_VL_TEMPLATE = _CHATML.replace("IMAGE_MARKUP", "<|vision_start|><|image_pad|><|vision_end|>")


def _byte_level_vocab() -> dict[str, int]:
    """GPT-2's byte-level alphabet, token id = byte value: any text tokenizes, no merges."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)}
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    vocab = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            vocab[chr(byte)] = byte
        else:
            vocab[chr(256 + shifted)] = byte
            shifted += 1
    return vocab


def tiny_tokenizer(specials: list[str], fixed_answer: str | None = None) -> Qwen2Tokenizer:
    """Byte-level Qwen2 tokenizer with ChatML specials; EOS is <|im_end|>, pad <|endoftext|>."""
    tokenizer = Qwen2Tokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=4096)
    tokenizer.add_special_tokens({"additional_special_tokens": CHATML_SPECIALS + specials})
    tokenizer.eos_token = EOS
    if fixed_answer is not None:
        tokenizer.add_tokens([fixed_answer])
    return tokenizer


def _text_config(tokenizer: Qwen2Tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )


@torch.no_grad()
def _rig_answer(model: torch.nn.Module, tokenizer: Qwen2Tokenizer, answer: str) -> None:
    """Set the weights so that greedy decoding gives `answer` then EOS (see module docstring)."""
    answer_id = tokenizer.convert_tokens_to_ids(answer)
    for name, parameter in model.named_parameters():
        if name.endswith(("o_proj.weight", "o_proj.bias", "down_proj.weight", "down_proj.bias")):
            parameter.zero_()
    embeddings = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if embeddings.data_ptr() == head.weight.data_ptr():
        raise AssertionError("fixed_answer needs untied input and output embeddings")
    embeddings.zero_()
    embeddings[:, 0] = 1.0
    embeddings[answer_id, 0] = 0.0
    embeddings[answer_id, 1] = 1.0
    head.weight.zero_()
    head.weight[answer_id, 0] = 1.0
    head.weight[tokenizer.eos_token_id, 1] = 1.0
    if getattr(head, "bias", None) is not None:
        head.bias.zero_()


def _finish(model, tokenizer, fixed_answer: str | None, folder: Path) -> None:
    model.eval()
    if fixed_answer is not None:
        _rig_answer(model, tokenizer, fixed_answer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(folder)


def build_tiny_llm(folder: str | Path, fixed_answer: str | None = None) -> Path:
    """A ~40k-parameter random Qwen2 causal LM with tokenizer and chat template in `folder`."""
    folder = Path(folder)
    tokenizer = tiny_tokenizer([], fixed_answer)
    tokenizer.chat_template = TEXT_TEMPLATE
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**_text_config(tokenizer)))
    _finish(model, tokenizer, fixed_answer, folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_vlm(folder: str | Path, fixed_answer: str | None = None) -> Path:
    """A tiny random LLaVA (CLIP vision tower, Qwen2 text model) with its LlavaProcessor."""
    folder = Path(folder)
    tokenizer = tiny_tokenizer([LLAVA_IMAGE], fixed_answer)
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        ),
        text_config=dict(model_type="qwen2", **_text_config(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    _finish(model, tokenizer, fixed_answer, folder)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token of the CLIP vision tower
        chat_template=LLAVA_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


def build_tiny_qwen_vl(folder: str | Path, fixed_answer: str | None = None) -> Path:
    """A tiny random Qwen2.5-VL laid out like a hub repo: the model, the tokenizer (no chat
    template of its own), the image processor naming `Qwen2_5_VLProcessor` as its processor
    class, and the processor's chat template in chat_template.json. Without torchvision,
    `AutoProcessor.from_pretrained(folder)` raises an ImportError on the video processor."""
    folder = Path(folder)
    tokenizer = tiny_tokenizer(QWEN_VISION_SPECIALS, fixed_answer)
    token_id = tokenizer.convert_tokens_to_ids
    text_config = _text_config(tokenizer)
    text_config["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 1, 1],
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=dict(
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
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _finish(model, tokenizer, fixed_answer, folder)
    tokenizer.save_pretrained(folder)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2
    )
    image_processor.save_pretrained(folder)
    preprocessor = folder / "preprocessor_config.json"
    settings = json.loads(preprocessor.read_text())
    settings["processor_class"] = "Qwen2_5_VLProcessor"
    preprocessor.write_text(json.dumps(settings, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_VL_TEMPLATE}))
    return folder
