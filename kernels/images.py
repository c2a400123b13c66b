"""The blur ladder for a list of images of mixed sizes: grouped by size, returned in input order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from priorscope.engine.errors import KernelError
from priorscope.kernels.blur import blur_ladder, parse_sigmas

# PIL modes numpy turns into uint8 or float arrays directly; anything else is converted first.
_DIRECT_MODES = frozenset({"L", "LA", "RGB", "RGBA", "F"})
_CONVERTED_MODES = {"1": "L", "I;16": "F", "I": "F"}


def _pil_to_array(image: Any) -> np.ndarray:
    """Return a PIL image as an ``[H, W]`` or ``[H, W, C]`` uint8/float32 array."""
    mode = image.mode
    if mode not in _DIRECT_MODES:
        image = image.convert(_CONVERTED_MODES.get(mode, "RGB"))
    return np.asarray(image)


def image_to_chw(image: object, index: int) -> Tensor:
    """Return one PIL image or ``[H, W]`` / ``[H, W, C]`` array as a ``[C, H, W]`` tensor.

    Arrays follow the PIL/OpenCV layout (channels last). uint8 and float arrays keep their dtype;
    PIL palette, CMYK and other modes become RGB, 16/32-bit integer modes become float32.
    """
    if hasattr(image, "mode") and hasattr(image, "size"):
        array = _pil_to_array(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise KernelError(
            f"Expected image {index} to be a PIL image or a numpy array [H, W] or [H, W, C]. "
            f"Got {type(image).__name__} instead."
        )
    if array.ndim not in (2, 3):
        raise KernelError(
            f"Expected image {index} as a numpy array [H, W] or [H, W, C] (channels last). "
            f"Got shape {array.shape} instead."
        )
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise KernelError(
            f"Expected image {index} of dtype uint8 or float. Got {array.dtype} instead. "
            "Convert it with array.astype(np.float32)."
        )
    chw = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    # Contiguous and writable (copied only if needed): torch refuses to wrap read-only buffers.
    return torch.from_numpy(np.require(chw, requirements=["C", "W"]))


def blur_ladder_images(
    images: Sequence[object],
    sigmas: Iterable[float],
    *,
    relative: bool = True,
    device: str | torch.device | None = None,
) -> list[Tensor]:
    """Return one ``[K, C, H, W]`` tensor per input image, in input order.

    Images of the same size, channel count and dtype are stacked and blurred in one
    :func:`blur_ladder` call on ``device`` (default CPU); results stay on that device.
    """
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise KernelError(
            f"Expected a list of PIL images or numpy arrays. Got {type(images).__name__} instead."
        )
    values = parse_sigmas(sigmas)
    tensors = [image_to_chw(image, i) for i, image in enumerate(images)]
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((*t.shape, t.dtype), []).append(i)
    results: list[Tensor | None] = [None] * len(tensors)
    for members in groups.values():
        batch = torch.stack([tensors[i] for i in members]).to(device)
        ladder = blur_ladder(batch, values, relative=relative)
        for j, i in enumerate(members):
            results[i] = ladder[j]
    return [r for r in results if r is not None]
