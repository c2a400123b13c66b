"""LLaVA-1.5 (``LlavaForConditionalGeneration``, llava-hf checkpoints) and what every LLaVA shares.

LLaVA-NeXT (:mod:`.llava_next`) subclasses :class:`LlavaAdapter`: same conversation format and
answer prefix, another processor and model class.
"""

from __future__ import annotations

from typing import ClassVar

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
    # "ASSISTANT:" is followed by a space, so answers start with a word-initial token.
    answer_prefix: ClassVar[str] = " "
    processor_class_name: ClassVar[str] = "LlavaProcessor"
    model_class_name: ClassVar[str] = "LlavaForConditionalGeneration"
    # LLaVA-1.5 was trained on one image per conversation: rows with several are refused.
    max_images: ClassVar[int | None] = 1
