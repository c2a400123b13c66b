"""Qwen2.5-VL: ``Qwen2_5_VLForConditionalGeneration`` with an image-only processor.

Qwen2.5-VL computes 3-D (temporal, height, width) rotary positions from ``mm_token_type_ids``;
without it the model silently falls back to 1-D positions, so :meth:`encode` keeps every key the
processor returns.
"""

from __future__ import annotations

from typing import Any, ClassVar

from priorscope.engine.models.qwen2_vl import Qwen2VLAdapter, image_only_processor


def image_only_qwen2_5_vl_processor() -> type:
    """Return the image-only Qwen2.5-VL processor class (registered with AutoProcessor)."""
    return image_only_processor("Qwen2_5_VLProcessor", "Qwen2_5_VLConfig")


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL checkpoints (model_type ``qwen2_5_vl``), including the model organism."""

    family: ClassVar[str] = "qwen2_5_vl"
    model_class_name: ClassVar[str] = "Qwen2_5_VLForConditionalGeneration"

    @classmethod
    def processor_class(cls) -> Any:
        return image_only_qwen2_5_vl_processor()
