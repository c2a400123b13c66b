"""Qwen-VL models built from code: the one config and processor builder.

The tiny test models, the model organism and the benchmarks' random-weight models all describe a
Qwen2-VL or Qwen2.5-VL model by :class:`QwenSizes` and get its config and image-only processor
here, so that a change to how priorscope builds these models is made once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from priorscope.engine.errors import UsageError, did_you_mean

QWEN_FAMILIES = ("qwen2_5_vl", "qwen2_vl")


@dataclass(frozen=True)
class QwenSizes:
    """Sizes of a Qwen-VL text decoder and vision tower.

    ``window`` (Qwen2.5-VL's windowed attention, in pixels) and ``fullatt_blocks`` (its vision
    blocks with full attention) are ignored for Qwen2-VL. ``vocab_size`` None: the tokenizer's.
    """

    d_model: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vision_depth: int
    vision_width: int
    vision_heads: int
    window: int = 112
    fullatt_blocks: tuple[int, ...] = ()
    max_positions: int = 1024
    rope_theta: float = 10000.0
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.d_model % self.heads or (self.d_model // self.heads) % 4:
            raise UsageError(
                f"Expected d_model divisible by heads with head_dim a multiple of 4 (M-RoPE "
                f"splits head_dim / 2 in three). Got d_model={self.d_model}, heads={self.heads}."
            )
        if self.vision_width % self.vision_heads:
            raise UsageError(
                f"Expected vision_width divisible by vision_heads. Got {self.vision_width} and "
                f"{self.vision_heads}."
            )

    @property
    def mrope_section(self) -> list[int]:
        """Return the (temporal, height, width) M-RoPE split of head_dim / 2 (Qwen's 1:1.5:1.5)."""
        half = self.d_model // self.heads // 2
        temporal = half // 4
        height = (half - temporal) // 2
        return [temporal, height, half - temporal - height]


def _vision_config(family: str, sizes: QwenSizes) -> dict[str, Any]:
    common = dict(
        depth=sizes.vision_depth,
        num_heads=sizes.vision_heads,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    if family == "qwen2_vl":
        # Qwen2-VL names the tower width embed_dim and its output width hidden_size.
        return dict(common, embed_dim=sizes.vision_width, hidden_size=sizes.d_model, mlp_ratio=2)
    return dict(
        common,
        hidden_size=sizes.vision_width,
        intermediate_size=2 * sizes.vision_width,
        out_hidden_size=sizes.d_model,
        window_size=sizes.window,
        fullatt_block_indexes=list(sizes.fullatt_blocks),
    )


def qwen_vl_config(family: str, tokenizer: Any, sizes: QwenSizes) -> Any:
    """Return the transformers config of a Qwen2-VL or Qwen2.5-VL model of ``sizes``.

    Special token ids come from ``tokenizer`` (Qwen's chat and vision tokens must be in it).
    """
    import transformers

    if family not in QWEN_FAMILIES:
        raise did_you_mean(family, QWEN_FAMILIES, "Qwen-VL family")
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        vocab_size=sizes.vocab_size or len(tokenizer),
        hidden_size=sizes.d_model,
        intermediate_size=sizes.ffn,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=sizes.max_positions,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": sizes.rope_theta,
            "mrope_section": sizes.mrope_section,
        },
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config_class = (
        transformers.Qwen2VLConfig if family == "qwen2_vl" else transformers.Qwen2_5_VLConfig
    )
    return config_class(
        text_config=text,
        vision_config=_vision_config(family, sizes),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def qwen_vl_processor(
    family: str,
    tokenizer: Any,
    image_size: int,
    chat_template: str,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Any:
    """Return the image-only processor that resizes every image to ``image_size`` squared pixels.

    ``normalize`` is (mean, std) per channel; None keeps the processor's CLIP defaults.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from priorscope.engine.models.qwen2_5_vl import image_only_qwen2_5_vl_processor
    from priorscope.engine.models.qwen2_vl import image_only_qwen2_vl_processor

    if family not in QWEN_FAMILIES:
        raise did_you_mean(family, QWEN_FAMILIES, "Qwen-VL family")
    pixels = image_size * image_size
    extra: dict[str, Any] = {}
    if normalize is not None:
        extra = dict(image_mean=list(normalize[0]), image_std=list(normalize[1]))
    improc = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, **extra)
    cls = (
        image_only_qwen2_vl_processor()
        if family == "qwen2_vl"
        else image_only_qwen2_5_vl_processor()
    )
    return cls(image_processor=improc, tokenizer=tokenizer, chat_template=chat_template)


def qwen_vl_model(family: str, tokenizer: Any, sizes: QwenSizes, **kwargs: Any) -> Any:
    """Return a freshly initialised Qwen-VL model (``kwargs`` go to ``_from_config``)."""
    import transformers

    config = qwen_vl_config(family, tokenizer, sizes)
    name = (
        "Qwen2VLForConditionalGeneration"
        if family == "qwen2_vl"
        else ("Qwen2_5_VLForConditionalGeneration")
    )
    model_class = getattr(transformers, name)
    return model_class._from_config(config, **kwargs) if kwargs else model_class(config)


__all__ = ["QWEN_FAMILIES", "QwenSizes", "qwen_vl_config", "qwen_vl_model", "qwen_vl_processor"]
