"""Qwen2.5-VL: ``Qwen2_5_VLForConditionalGeneration`` with an image-only processor.

Qwen2.5-VL computes 3-D (temporal, height, width) rotary positions from ``mm_token_type_ids``;
without it the model silently falls back to 1-D positions, so :meth:`encode` keeps every key the
processor returns.
"""

from __future__ import annotations

from typing import Any, ClassVar

from priorscope.engine.models.hf import HFAdapter
from priorscope.engine.models.qwen2_vl import QWEN_CHAT_TEMPLATE, _image_only, _register

_PROC: type | None = None


def image_only_qwen2_5_vl_processor() -> type:
    """Return the image-only Qwen2.5-VL processor class (registered with AutoProcessor)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

    global _PROC
    if _PROC is None:
        _PROC = _image_only(Qwen2_5_VLProcessor)
        _register(Qwen2_5_VLConfig, _PROC)
    return _PROC


class Qwen2_5_VLAdapter(HFAdapter):
    """Qwen2.5-VL checkpoints (model_type ``qwen2_5_vl``), including the model organism."""

    family: ClassVar[str] = "qwen2_5_vl"
    default_chat_template: ClassVar[str | None] = QWEN_CHAT_TEMPLATE

    @classmethod
    def processor_class(cls) -> Any:
        return image_only_qwen2_5_vl_processor()

    @classmethod
    def model_class(cls) -> Any:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
