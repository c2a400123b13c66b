"""The organism's architecture, tokenizer and processor, built from code.

The tokenizer is word-level over the synthetic vocabulary plus the prompt words, so every
answer is one token. The chat template is Qwen's without the default system message, to keep
training sequences short (34 tokens with an 84 x 84 image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from priorscope.engine.errors import UsageError
from priorscope.engine.models.configs import QwenSizes, qwen_vl_model, qwen_vl_processor
from priorscope.engine.models.qwen2_vl import QWEN_CHAT_TEMPLATE_NO_SYSTEM
from priorscope.engine.models.wordlevel import word_tokenizer

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
    return word_tokenizer("qwen")


def organism_processor(arch: OrganismArch, tokenizer: Any) -> Any:
    """Return the image-only Qwen2.5-VL processor that resizes every image to image_size²."""
    return qwen_vl_processor(
        "qwen2_5_vl",
        tokenizer,
        arch.image_size,
        ORGANISM_CHAT_TEMPLATE,
        normalize=NORMALIZATIONS[arch.normalize],
    )


def organism_sizes(arch: OrganismArch) -> QwenSizes:
    """Return the organism's sizes in the shared Qwen-VL builder's terms."""
    return QwenSizes(
        d_model=arch.d_model,
        layers=arch.layers,
        heads=arch.heads,
        kv_heads=arch.kv_heads,
        ffn=arch.ffn,
        vision_depth=arch.vision_depth,
        vision_width=arch.vision_width,
        vision_heads=max(1, arch.vision_width // 32),
        window=arch.image_size,
        fullatt_blocks=(arch.vision_depth - 1,),
        max_positions=512,
    )


def organism_model(arch: OrganismArch, tokenizer: Any) -> Any:
    """Return a freshly initialised Qwen2_5_VLForConditionalGeneration of the given sizes."""
    return qwen_vl_model("qwen2_5_vl", tokenizer, organism_sizes(arch))
