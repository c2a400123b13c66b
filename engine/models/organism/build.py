"""The organism's architecture, tokenizer and processor, built from code.

The tokenizer is word-level over the synthetic vocabulary plus the prompt words, so every
answer is one token. The chat template is Qwen's without the default system message, to keep
training sequences short (34 tokens with an 84 x 84 image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from priorscope.engine.errors import UsageError
from priorscope.engine.models.qwen2_vl import QWEN_CHAT_TEMPLATE_NO_SYSTEM, QWEN_SPECIAL_TOKENS
from priorscope.engine.models.wordlevel import make_tokenizer

ORGANISM_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE_NO_SYSTEM


# (mean, std) per channel; the background grey of priorscope.engine.data.synth is 236.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "background": ((236 / 255,) * 3, (0.3,) * 3),
}


@dataclass(frozen=True)
class OrganismArch:
    """Sizes of the organism (defaults: about 1.5 M parameters)."""

    d_model: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 384
    vision_width: int = 96
    vision_depth: int = 3
    # 84 x 84 pixels = 3 x 3 merged image tokens of 28 x 28: each token is one cell of the synth
    # 3 x 3 grid (any synth image is resized to this by the processor).
    image_size: int = 84
    # "background": pixels centred on the synth background grey, so empty patches are near zero
    # and shapes stand out; "clip": the CLIP mean/std every Qwen2-VL processor uses by default.
    normalize: str = "background"

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise UsageError(
                f"Expected normalize to be one of {', '.join(NORMALIZATIONS)}. Got "
                f"{self.normalize!r}."
            )
        if self.d_model % self.heads or (self.d_model // self.heads) % 4:
            raise UsageError(
                f"Expected d_model divisible by heads with head_dim a multiple of 4. Got "
                f"d_model={self.d_model}, heads={self.heads}."
            )
        if self.image_size % 28:
            raise UsageError(
                f"Expected an image size that is a multiple of 28 (patch 14, merge 2). Got "
                f"{self.image_size}."
            )


def organism_tokenizer() -> Any:
    """Return the organism's word-level tokenizer (Qwen special tokens + synth vocabulary)."""
    from priorscope.engine.data.synth import VOCABULARY

    return make_tokenizer(
        QWEN_SPECIAL_TOKENS,
        VOCABULARY,
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
    )


def organism_processor(arch: OrganismArch, tokenizer: Any) -> Any:
    """Return the image-only Qwen2.5-VL processor that resizes every image to image_size²."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from priorscope.engine.models.qwen2_5_vl import image_only_qwen2_5_vl_processor

    pixels = arch.image_size * arch.image_size
    mean, std = NORMALIZATIONS[arch.normalize]
    improc = Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, image_mean=list(mean), image_std=list(std)
    )
    return image_only_qwen2_5_vl_processor()(
        image_processor=improc, tokenizer=tokenizer, chat_template=ORGANISM_CHAT_TEMPLATE
    )


def organism_model(arch: OrganismArch, tokenizer: Any) -> Any:
    """Return a freshly initialised Qwen2_5_VLForConditionalGeneration of the given sizes."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    half = arch.d_model // arch.heads // 2
    # M-RoPE splits head_dim / 2 frequencies over (temporal, height, width).
    section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=arch.d_model,
        intermediate_size=arch.ffn,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    vision = dict(
        depth=arch.vision_depth,
        hidden_size=arch.vision_width,
        intermediate_size=2 * arch.vision_width,
        num_heads=max(1, arch.vision_width // 32),
        out_hidden_size=arch.d_model,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=arch.image_size,
        fullatt_block_indexes=[arch.vision_depth - 1],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)
