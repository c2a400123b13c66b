"""Qwen2-VL: ``Qwen2VLForConditionalGeneration`` with an image-only processor."""

from __future__ import annotations

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

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _image_only(base: type) -> type:
    """Return a subclass of a Qwen processor that has no video processor.

    The stock processors also load a video processor, which needs torchvision; without it
    ``from_pretrained`` fails or (through AutoProcessor) silently returns only the tokenizer.
    """

    def __init__(
        self: Any,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: Any = None,
        **kwargs: Any,
    ) -> None:
        base.__init__(  # type: ignore[misc]
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=chat_template,
            **kwargs,
        )

    name = f"Priorscope{base.__name__}"
    return type(name, (base,), {"__init__": __init__, "__module__": __name__})


def _register(config_cls: type, processor_cls: type) -> None:
    from transformers import AutoProcessor

    # Registered in every process that imports priorscope.engine.models, so AutoProcessor can
    # load the folders priorscope saves (their processor_class names this subclass).
    AutoProcessor.register(config_cls, processor_cls, exist_ok=True)


def image_only_qwen2_vl_processor() -> type:
    """Return the image-only Qwen2-VL processor class (registered with AutoProcessor)."""
    from transformers import Qwen2VLConfig, Qwen2VLProcessor

    global _QWEN2_VL_PROC
    if _QWEN2_VL_PROC is None:
        _QWEN2_VL_PROC = _image_only(Qwen2VLProcessor)
        _register(Qwen2VLConfig, _QWEN2_VL_PROC)
    return _QWEN2_VL_PROC


_QWEN2_VL_PROC: type | None = None


class Qwen2VLAdapter(HFAdapter):
    """Qwen2-VL checkpoints (model_type ``qwen2_vl``)."""

    family: ClassVar[str] = "qwen2_vl"
    default_chat_template: ClassVar[str | None] = QWEN_CHAT_TEMPLATE

    @classmethod
    def processor_class(cls) -> Any:
        return image_only_qwen2_vl_processor()

    @classmethod
    def model_class(cls) -> Any:
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration
