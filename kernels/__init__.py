"""Kernels on images and activations, with no import of priorscope.engine.

- :mod:`.blur`: the Gaussian blur ladder on CPU and GPU, and the fully obfuscated image;
- :mod:`.triton_blur`: the ladder's blur levels as one fused Triton kernel (CUDA; imported by
  :mod:`.blur` only for CUDA tensors when triton is installed);
- :mod:`.images`: the same for lists of PIL images or numpy arrays;
- :mod:`.reduce`: the site reductions of the residual stream (last, image_mean, text_mean);
- :mod:`.resize`: Pillow's 8-bit resize and Qwen2-VL's preprocessing as tensor ops, bitwise;
- :mod:`.errors`: the errors they raise.

Names load on first use, so ``priorscope.kernels.errors`` imports without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from priorscope.kernels.blur import blur_ladder, obfuscate_total
    from priorscope.kernels.errors import KernelError, KernelUsageError
    from priorscope.kernels.images import blur_ladder_images, total_image
    from priorscope.kernels.reduce import reduce_sites, reduce_sites_reference

_EXPORTS = {
    "blur_ladder": "blur",
    "obfuscate_total": "blur",
    "blur_ladder_images": "images",
    "total_image": "images",
    "reduce_sites": "reduce",
    "reduce_sites_reference": "reduce",
    "KernelError": "errors",
    "KernelUsageError": "errors",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "KernelError",
    "KernelUsageError",
    "blur_ladder",
    "blur_ladder_images",
    "obfuscate_total",
    "reduce_sites",
    "reduce_sites_reference",
    "total_image",
]
