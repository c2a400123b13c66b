"""Kernels over lists of PIL images or numpy arrays: the blur ladder (grouped by size, returned in
input order) and the fully obfuscated image."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from priorscope.kernels.blur import blur_ladder, obfuscate_total, parse_sigmas
from priorscope.kernels.errors import KernelError

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


def total_image(image: Any) -> Any:
    """Return ``image`` with every pixel set to its channel's mean: same size, mode and dtype.

    Takes a PIL image (returns one) or an ``[H, W]`` / ``[H, W, C]`` array (returns one). This
    is :func:`~priorscope.kernels.blur.obfuscate_total`, so it equals the ``total`` condition of
    a capture pixel for pixel (uint8: the mean rounded half to even).
    """
    is_pil = hasattr(image, "mode") and hasattr(image, "size")
    array = _pil_to_array(image) if is_pil else image
    chw = image_to_chw(array, 0)
    filled = obfuscate_total(chw.unsqueeze(0))[0]  # [C, H, W]
    out = np.ascontiguousarray(filled.permute(1, 2, 0).numpy())
    if np.ndim(array) == 2:
        out = out[..., 0]
    if not is_pil:
        return out
    from PIL import Image

    return Image.fromarray(out)
