"""Pillow's resize of 8-bit images, bit for bit, as tensor ops on any device.

Image processors of the Qwen2-VL family resize with ``PIL.Image.resize`` (bicubic) before they
normalise. To keep condition images on the GPU from the blur to the model, the resize has to
give the very bytes Pillow gives, or the hidden states would depend on where preprocessing ran.

Pillow resamples 8-bit images in two separable passes (horizontal, then vertical, each rounded
and clipped to uint8). Each output pixel is a fixed-point sum: the filter weights, normalised to
sum 1 in double precision, are scaled by ``2**22`` and truncated to integers; the sum of
``pixel * weight`` starts at ``2**21`` and is shifted right by 22 bits, then clipped to 0..255.
Here the weights are computed on the host in float64 exactly as Pillow computes them, laid out
as a dense [out, in] matrix, and each pass is a float64 matrix product: every product and
partial sum is an integer below ``2**53``, so the sums are exact in any order and the result is
the same on every device. A side that keeps its size is not resampled (Pillow skips that pass).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from priorscope.kernels.errors import KernelError, KernelUsageError

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images


def _bicubic(x: float) -> float:
    a = -0.5  # Pillow's bicubic constant
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


# Pillow's filters by name: (function, support).
FILTERS: dict[str, tuple[Callable[[float], float], float]] = {
    "bicubic": (_bicubic, 2.0),
    "bilinear": (_bilinear, 1.0),
}
# PIL.Image.Resampling values of those filters (what image processors store as ``resample``).
PIL_CODES = {2: "bilinear", 3: "bicubic"}


@lru_cache(maxsize=256)
def resample_matrix(in_size: int, out_size: int, method: str = "bicubic") -> np.ndarray:
    """Return Pillow's fixed-point weights [out_size, in_size] (int64) of one resize pass."""
    if method not in FILTERS:
        raise KernelUsageError(
            f"Expected a resample filter in {sorted(FILTERS)}. Got {method!r}; Pillow's other "
            "filters are not reproduced here, so preprocess on the host."
        )
    if in_size < 1 or out_size < 1:
        raise KernelUsageError(f"Expected positive sizes. Got {in_size} -> {out_size}.")
    fn, base_support = FILTERS[method]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    inv = 1.0 / filterscale
    out = np.zeros((out_size, in_size), dtype=np.int64)
    one = float(1 << PRECISION_BITS)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) cast: truncation toward zero
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [fn((x + xmin - center + 0.5) * inv) for x in range(xmax)]
        total = 0.0
        for w in weights:  # summed in order, as Pillow does
            total += w
        for x, w in enumerate(weights):
            k = w / total if total != 0.0 else w
            out[xx, xmin + x] = int(k * one - 0.5) if k < 0 else int(k * one + 0.5)
    return out


def _pass(x: torch.Tensor, weights: np.ndarray, dim: int) -> torch.Tensor:
    """Return one rounded, clipped resampling pass of float64 integer pixels along ``dim``."""
    k = torch.from_numpy(weights).to(device=x.device, dtype=torch.float64)
    moved = x.movedim(dim, -1)
    acc = moved @ k.T + float(1 << (PRECISION_BITS - 1))
    out = torch.floor(acc / float(1 << PRECISION_BITS)).clamp_(0.0, 255.0)
    return out.movedim(-1, dim)


def _two_pass(
    x: torch.Tensor, h: int, w: int, out_h: int, out_w: int, method: str, order: str
) -> torch.Tensor:
    """Return float64 pixels ``x`` [..., h, w] resampled to (out_h, out_w), passes in ``order``."""
    for side in ("w", "h") if order == "hv" else ("h", "w"):
        if side == "w" and out_w != w:
            x = _pass(x, resample_matrix(w, out_w, method), -1)
        if side == "h" and out_h != h:
            x = _pass(x, resample_matrix(h, out_h, method), -2)
    return x


@lru_cache(maxsize=1024)
def pass_order(h: int, w: int, out_h: int, out_w: int, method: str = "bicubic") -> str:
    """Return the order of the two passes ("hv" or "vh") the installed Pillow uses.

    Pillow before 13 always resampled horizontally first; Pillow 13 runs the vertical pass
    first when that is cheaper, by a rule internal to its C code. The passes round to uint8 in
    between, so the order changes the result. Rather than track that rule across versions, the
    installed Pillow is asked: a seeded noise image of this size is resized by Pillow and by
    both orders here, and the order that gives Pillow's bytes is kept (once per size pair).
    """
    from PIL import Image

    if out_h == h or out_w == w:
        return "hv"  # one pass only: no order to choose
    code = {name: c for c, name in PIL_CODES.items()}[method]
    for seed in range(3):
        rng = np.random.default_rng([h, w, out_h, out_w, seed])
        probe = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(probe).resize((out_w, out_h), resample=code))
        x = torch.from_numpy(probe).permute(2, 0, 1).to(torch.float64)
        got = {
            order: _two_pass(x, h, w, out_h, out_w, method, order).permute(1, 2, 0).numpy()
            for order in ("hv", "vh")
        }
        matches = [order for order, img in got.items() if np.array_equal(img, want)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            break
    else:
        return "hv"  # both orders give Pillow's bytes on every probe: either will do
    raise KernelError(
        f"Expected Pillow's {method} resize {h}x{w} -> {out_h}x{out_w} to be reproducible in "
        "two separable passes. Got bytes neither order gives: this Pillow resamples otherwise; "
        "preprocess on the host (the image processor's own resize)."
    )


def resize_uint8(
    images: torch.Tensor, size: tuple[int, int], method: str = "bicubic"
) -> torch.Tensor:
    """Return ``images`` [..., H, W] uint8 resized to ``size`` (height, width) as Pillow would.

    Equal, byte for byte, to ``PIL.Image.resize((width, height), resample)`` of each image
    (``reducing_gap`` None, the default box), on whatever device ``images`` is on, for the
    installed Pillow (see :func:`pass_order`).
    """
    if images.dtype != torch.uint8:
        raise KernelUsageError(
            f"Expected uint8 images for Pillow's 8-bit resize. Got {images.dtype}; round and "
            "clip to 0..255 first (the blur ladder returns uint8 for uint8 input)."
        )
    if images.dim() < 2:
        raise KernelUsageError(f"Expected images [..., H, W]. Got shape {tuple(images.shape)}.")
    h, w = images.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    resample_matrix(w, out_w, method)  # checks the filter and the sizes
    resample_matrix(h, out_h, method)
    if (out_h, out_w) == (h, w):
        return images.clone()
    order = pass_order(h, w, out_h, out_w, method)
    return _two_pass(images.to(torch.float64), h, w, out_h, out_w, method, order).to(torch.uint8)


def qwen_pixel_values(
    images: torch.Tensor,
    *,
    size: tuple[int, int],
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
    image_mean: tuple[float, ...],
    image_std: tuple[float, ...],
    rescale_factor: float,
    method: str = "bicubic",
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Return (pixel_values [N * patches, C * T * P * P] float32, grid (1, gh, gw)) of ``images``.

    ``images`` [N, C, H, W] uint8 share one size. The steps and their arithmetic are those of
    Qwen2-VL's PIL image processor: resize to ``size`` (height, width: the processor's
    ``smart_resize`` of the image size; Pillow's bytes, see :func:`resize_uint8`), rescale in float64 then round to float32, normalise in float32,
    then cut into patches, each image repeated over the temporal patch. The values are equal,
    bit for bit, to the processor's, on whatever device ``images`` is on.
    """
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise KernelUsageError(
            f"Expected uint8 images [N, C, H, W]. Got {images.dtype} {tuple(images.shape)}."
        )
    n, c = images.shape[:2]
    out_h, out_w = size
    x = resize_uint8(images, (out_h, out_w), method)
    x = (x.to(torch.float64) * rescale_factor).to(torch.float32)
    mean = torch.tensor(image_mean, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(image_std, dtype=torch.float32, device=x.device)[:, None, None]
    x = (x - mean) / std
    gh, gw = out_h // patch_size, out_w // patch_size
    m, p, t = merge_size, patch_size, temporal_patch_size
    x = x.reshape(n, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # [N, gh/m, gw/m, m, m, C, P, P]
    x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)
    return x.reshape(n * gh * gw, c * t * p * p), (1, gh, gw)
