"""LLaVA-NeXT / LLaVA-1.6 (``LlavaNextForConditionalGeneration``), any-resolution tiling."""

from __future__ import annotations

from typing import ClassVar

from priorscope.engine.models.llava import LlavaAdapter


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT checkpoints (model_type ``llava_next``): LLaVA's format, tiled images."""

    family: ClassVar[str] = "llava_next"
    processor_class_name: ClassVar[str] = "LlavaNextProcessor"
    model_class_name: ClassVar[str] = "LlavaNextForConditionalGeneration"
    # Several images per prompt: each placeholder is expanded for its own image's tiling.
    max_images: ClassVar[int | None] = None
