"""LLaVA-NeXT / LLaVA-1.6 (``LlavaNextForConditionalGeneration``), any-resolution tiling."""

from __future__ import annotations

from typing import Any, ClassVar

from priorscope.engine.models.hf import HFAdapter
from priorscope.engine.models.llava import LLAVA_CHAT_TEMPLATE


class LlavaNextAdapter(HFAdapter):
    """LLaVA-NeXT checkpoints (model_type ``llava_next``)."""

    family: ClassVar[str] = "llava_next"
    default_chat_template: ClassVar[str | None] = LLAVA_CHAT_TEMPLATE
    answer_prefix: ClassVar[str] = " "

    @classmethod
    def processor_class(cls) -> Any:
        from transformers import LlavaNextProcessor

        return LlavaNextProcessor

    @classmethod
    def model_class(cls) -> Any:
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration
