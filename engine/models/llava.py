"""LLaVA-1.5 (``LlavaForConditionalGeneration``, llava-hf checkpoints)."""

from __future__ import annotations

from typing import Any, ClassVar

from priorscope.engine.models.hf import HFAdapter

# The llava-hf conversation format: "USER: <image>\n{text} ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


class LlavaAdapter(HFAdapter):
    """LLaVA-1.5 checkpoints (model_type ``llava``)."""

    family: ClassVar[str] = "llava"
    default_chat_template: ClassVar[str | None] = LLAVA_CHAT_TEMPLATE
    answer_prefix: ClassVar[str] = " "

    @classmethod
    def processor_class(cls) -> Any:
        from transformers import LlavaProcessor

        return LlavaProcessor

    @classmethod
    def model_class(cls) -> Any:
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration
