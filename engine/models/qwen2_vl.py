"""Qwen2-VL: ``Qwen2VLForConditionalGeneration`` with an image-only processor.

Also what both Qwen-VL families share: the chat template and the image-only processor classes.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from priorscope.engine.models.hf import HFAdapter

# Qwen's own chat template, image and text parts only (the checkpoint's template wins if present).
_QWEN_DEFAULT_SYSTEM = (
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
)
_QWEN_TURN = (
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The Qwen2-VL/Qwen2.5-VL chat format; the no-system variant is the model organism's.
QWEN_CHAT_TEMPLATE_NO_SYSTEM = "{% for message in messages %}" + _QWEN_TURN
QWEN_CHAT_TEMPLATE = "{% for message in messages %}" + _QWEN_DEFAULT_SYSTEM + _QWEN_TURN


@functools.cache
def image_only_processor(processor_name: str, config_name: str) -> type:
    """Return a subclass of a Qwen processor with no video processor, registered for its config.

    The stock processors also load a video processor, which needs torchvision; without it
    ``from_pretrained`` fails or (through AutoProcessor) silently returns only the tokenizer.
    Registered with AutoProcessor in every process that asks for it, so that AutoProcessor can
    load the folders priorscope saves (their processor_class names this subclass).
    """
    import transformers

    base = getattr(transformers, processor_name)

    def __init__(
        self: Any,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: Any = None,
        **kwargs: Any,
    ) -> None:
        base.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=chat_template,
            **kwargs,
        )

    cls = type(
        f"Priorscope{processor_name}", (base,), {"__init__": __init__, "__module__": __name__}
    )
    transformers.AutoProcessor.register(getattr(transformers, config_name), cls, exist_ok=True)
    return cls


def image_only_qwen2_vl_processor() -> type:
    """Return the image-only Qwen2-VL processor class (registered with AutoProcessor)."""
    return image_only_processor("Qwen2VLProcessor", "Qwen2VLConfig")


class Qwen2VLAdapter(HFAdapter):
    """Qwen2-VL checkpoints (model_type ``qwen2_vl``)."""

    family: ClassVar[str] = "qwen2_vl"
    default_chat_template: ClassVar[str | None] = QWEN_CHAT_TEMPLATE
    model_class_name: ClassVar[str] = "Qwen2VLForConditionalGeneration"
    # Several images per prompt: each placeholder gets its own grid and M-RoPE positions.
    max_images: ClassVar[int | None] = None

    @classmethod
    def processor_class(cls) -> Any:
        return image_only_qwen2_vl_processor()
