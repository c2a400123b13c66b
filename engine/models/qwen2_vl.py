"""Qwen2-VL: ``Qwen2VLForConditionalGeneration`` with an image-only processor.

Also what both Qwen-VL families share: the chat template and the image-only processor classes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, ClassVar

from priorscope.engine.models.hf import HFAdapter
from priorscope.engine.models.qwen_layout import GridIndexCache, layout_memo, supported

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

    def __init__(self, model: Any, processor: Any, name_or_path: str) -> None:
        super().__init__(model, processor, name_or_path)
        # Vision index tensors per image grid, kept across batches (engine/models/qwen_layout).
        self._grids = GridIndexCache(model.model.visual) if supported(model) else None

    def forward_context(self) -> contextlib.AbstractContextManager[None]:
        if self._grids is None:
            return contextlib.nullcontext()
        return layout_memo(self.model, self._grids)


def device_pixel_values(image_processor: Any, images: Any) -> tuple[Any, Any]:
    """Return (pixel_values, image_grid_thw) of uint8 ``images`` [N, C, H, W], on their device.

    The Qwen2-VL family's image preprocessing (resize, rescale, normalise, patchify) as tensor
    ops, bitwise equal to what ``image_processor`` returns for the same images as PIL images,
    so condition images can stay on the GPU from the blur to the model. Only Qwen2-VL's PIL
    image processor (the one used where torchvision is absent) with its own steps is
    reproduced; any other processor or option is refused with the reason, and the images are
    then preprocessed on the host as usual.
    """
    import sys

    import torch

    from priorscope.engine.errors import ModelError
    from priorscope.kernels.resize import PIL_CODES, qwen_pixel_values

    name = type(image_processor).__name__
    if name != "Qwen2VLImageProcessorPil":
        raise ModelError(
            f"Expected Qwen2-VL's PIL image processor for device preprocessing. Got {name}; "
            "preprocess on the host (its own resize differs from Pillow's)."
        )
    ip = image_processor
    flags = {"do_resize": True, "do_rescale": True, "do_normalize": True}
    off = [flag for flag, want in flags.items() if bool(getattr(ip, flag)) != want]
    if off or int(ip.resample) not in PIL_CODES:
        raise ModelError(
            f"Expected the processor's default steps (resize bicubic or bilinear, rescale, "
            f"normalise). Got {off or f'resample={ip.resample}'} changed; preprocess on the host."
        )
    channels = int(images.shape[1]) if images.dim() == 4 else -1
    if channels != 3:
        raise ModelError(
            f"Expected RGB images [N, 3, H, W] for device preprocessing. Got shape "
            f"{tuple(images.shape)}; the processor converts other modes to RGB on the host."
        )

    def per_channel(value: Any) -> tuple[float, ...]:
        values = value if isinstance(value, list | tuple) else [value] * channels
        return tuple(float(v) for v in values)

    # The target size by the processor's own function, so it follows the installed version.
    smart_resize = sys.modules[type(ip).__module__].smart_resize
    factor = int(ip.patch_size) * int(ip.merge_size)
    height, width = int(images.shape[2]), int(images.shape[3])
    size = smart_resize(
        height,
        width,
        factor=factor,
        min_pixels=int(ip.size.shortest_edge),
        max_pixels=int(ip.size.longest_edge),
    )
    pixel_values, grid = qwen_pixel_values(
        images,
        size=(int(size[0]), int(size[1])),
        patch_size=int(ip.patch_size),
        temporal_patch_size=int(ip.temporal_patch_size),
        merge_size=int(ip.merge_size),
        image_mean=per_channel(ip.image_mean),
        image_std=per_channel(ip.image_std),
        rescale_factor=float(ip.rescale_factor),
        method=PIL_CODES[int(ip.resample)],
    )
    thw = torch.tensor([grid] * images.shape[0], dtype=torch.long, device=images.device)
    return pixel_values, thw
