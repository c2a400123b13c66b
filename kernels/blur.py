"""The whole Gaussian blur ladder of a batch of images in one call, exact to scipy's definition.

``blur_ladder(images [B, C, H, W], sigmas) -> [B, K, C, H, W]`` gives, per sigma, what
``scipy.ndimage.gaussian_filter(channel, sigma, mode="reflect", truncate=4.0)`` gives per channel:
the sampled Gaussian of radius ``int(4 * sigma + 0.5)``, normalised to sum 1, with borders mirrored
with the edge pixel repeated. ``inf`` sets every pixel to its channel's mean; ``0`` copies.

Two exact algorithms, chosen per sigma by the kernel radius:

* **spectral** (radius > DIRECT_MAX_RADIUS): a separable symmetric convolution with reflect
  borders is diagonal in the DCT-II basis, with eigenvalues ``H[k] = sum_m w[m] cos(pi k m / N)``
  of the *sampled, truncated* kernel itself. So it is exact for any radius (also beyond the image
  size, where the mirror repeats), not the continuous Gaussian, whose gain differs from the
  sampled one (most at small sigmas). One forward 2-D DCT is shared by the whole ladder
  (kernels/dct.py keeps it in the form the inverses need); each sigma then costs four complex
  multiply-adds, one inverse FFT per axis and the output reorder, whatever the sigma.
* **direct** (small radius): separable convolution as ``r`` multiply-adds of mirrored-shifted
  slices per axis (the kernel is symmetric: one multiply per tap pair). Its cost grows with the
  radius, so the cut sits where it meets the marginal cost of one more spectral level.

On CPU the batch is processed one image plane at a time (small planes grouped), which keeps a
large working set in cache. On CUDA, when triton is installed, every blur level of the ladder
is written by one fused Triton launch (kernels/triton_blur.py: the same operator as a banded
matrix product, checked against this torch path and scipy); otherwise, and with FUSED_KERNEL
off, the same torch code runs as whole-batch launches (cuFFT and elementwise kernels). The CPU
path imports neither cupy nor triton. Arithmetic is float32 for uint8/float16/bfloat16/float32
inputs and float64 for float64 inputs. The measured crossover, the chunking gain and the
alternatives rejected by measurement are in benchmarks/RESULTS.md ("Blur ladder").
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from priorscope.kernels.dct import SeparableSpectrum
from priorscope.kernels.errors import KernelError, KernelUsageError

TRUNCATE = 4.0
# Largest kernel radius (pixels) blurred by direct convolution; larger ones go spectral.
# Measured crossover: benchmarks/RESULTS.md ("Blur ladder", design measurements).
DIRECT_MAX_RADIUS = 8
# Largest kernel radius accepted: its weights are materialised (8 bytes per tap) before folding.
MAX_RADIUS = 10**7
# Pixels per work chunk on CPU and on CUDA (see _chunks).
CPU_CHUNK_PIXELS = 1 << 18
DEVICE_CHUNK_PIXELS = 1 << 28
# CUDA tensors: blur levels by the fused Triton kernel when triton is installed (False: torch).
FUSED_KERNEL = True

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: ``kind`` is identity, total, direct or spectral; sigma in pixels."""

    kind: str
    sigma_px: float


def kernel_radius(sigma_px: float) -> int:
    """Return scipy's kernel radius for ``sigma_px`` at truncate 4.0: ``int(4 * sigma + 0.5)``."""
    return int(TRUNCATE * sigma_px + 0.5)


@lru_cache(maxsize=256)
def gaussian_weights(sigma_px: float) -> np.ndarray:
    """Return the normalised sampled Gaussian ``[2r + 1]`` (float64) scipy uses for sigma_px."""
    radius = kernel_radius(sigma_px)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    if radius == 0:
        return np.ones(1)
    phi = np.exp(-0.5 / (sigma_px * sigma_px) * x * x)
    return phi / phi.sum()


@lru_cache(maxsize=256)
def transfer_function(n: int, sigma_px: float) -> np.ndarray:
    """Return the DCT-II eigenvalues ``[n]`` (float64) of the reflect-border blur of length n.

    ``H[k] = sum_m w[m] cos(pi k m / n)``. The kernel is folded onto one mirror period (2n
    samples) first, where it is symmetric, so H is the real part of its length-2n FFT: O(radius
    + n log n) time and O(n) memory for any radius.
    """
    w = gaussian_weights(sigma_px)
    radius = (w.size - 1) // 2
    folded = np.zeros(2 * n)
    np.add.at(folded, np.arange(-radius, radius + 1) % (2 * n), w)
    return np.fft.rfft(folded).real[:n]


def reflect_index(n: int, radius: int) -> np.ndarray:
    """Return source indices ``[n + 2r]`` of a row padded by ``radius`` with scipy's reflect."""
    idx = np.arange(-radius, n + radius) % (2 * n)
    return np.where(idx >= n, 2 * n - 1 - idx, idx)


def plan_ladder(sigmas_px: Iterable[float]) -> list[Level]:
    """Return one Level per sigma (pixels), choosing the cheaper exact algorithm for each."""
    levels = []
    for s in sigmas_px:
        if math.isinf(s):
            levels.append(Level("total", s))
        elif s <= 1e-15 or kernel_radius(s) == 0:
            # scipy skips sigma <= 1e-15 and a radius-0 kernel is [1.0]: both are the identity.
            levels.append(Level("identity", s))
        elif kernel_radius(s) <= DIRECT_MAX_RADIUS:
            levels.append(Level("direct", s))
        else:
            levels.append(Level("spectral", s))
    return levels


def _blur_axis_direct(x: Tensor, sigma_px: float, dim: int) -> Tensor:
    """Return ``x`` blurred along ``dim`` by direct symmetric convolution (same shape)."""
    n = x.shape[dim]
    w = gaussian_weights(sigma_px)
    radius = (w.size - 1) // 2
    idx = torch.from_numpy(reflect_index(n, radius)).to(x.device)
    padded = x.index_select(dim, idx)
    out = padded.narrow(dim, radius, n) * float(w[radius])
    for m in range(1, radius + 1):
        pair = padded.narrow(dim, radius + m, n) + padded.narrow(dim, radius - m, n)
        out.add_(pair, alpha=float(w[radius + m]))
    return out


@lru_cache(maxsize=32)
def _spectral_gains(
    h: int, w: int, sigma_px: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return SeparableSpectrum gain planes for one sigma (cached: as large as an image plane)."""
    gh = torch.from_numpy(transfer_function(h, sigma_px)).to(device=device, dtype=dtype)
    gw = torch.from_numpy(transfer_function(w, sigma_px)).to(device=device, dtype=dtype)
    return SeparableSpectrum.gains(gh, gw)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the arithmetic dtype for an input dtype: float64 stays, the rest use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _store(slot: Tensor, value: Tensor) -> None:
    """Write ``value`` (a temporary, changed in place) into ``slot``, broadcasting.

    uint8 is rounded half to even and clamped to 0..255 first; other dtypes are cast by copy_.
    """
    if slot.dtype == torch.uint8:
        value = value.round_().clamp_(0, 255)
    slot.copy_(value)


def _chunks(b: int, c: int, h: int, w: int, device: torch.device) -> list[tuple[slice, slice]]:
    """Return (images, channels) slices of at most a budget of pixels each (or one plane).

    On CPU the budget (CPU_CHUNK_PIXELS) is about one image plane: it keeps a 1024x768 working
    set in cache (measured 1.5x faster than the whole batch at once); small planes are grouped,
    whole images first, to amortise per-call overhead. On other devices the budget
    (DEVICE_CHUNK_PIXELS) bounds memory (estimated 40-50 bytes per pixel at peak) keeping 256
    images of 448x448 RGB in one launch per step.
    """
    budget = CPU_CHUNK_PIXELS if device.type == "cpu" else DEVICE_CHUNK_PIXELS
    planes = max(1, budget // (h * w))
    if planes >= b * c:
        return [(slice(0, b), slice(0, c))]
    if planes >= c:
        step = planes // c
        return [(slice(i, min(i + step, b)), slice(0, c)) for i in range(0, b, step)]
    return [
        (slice(i, i + 1), slice(lo, min(lo + planes, c)))
        for i in range(b)
        for lo in range(0, c, planes)
    ]


def _fused_kernel_applies(images: Tensor, levels: list[Level]) -> bool:
    """Return whether the blur levels go to the fused Triton kernel (kernels/triton_blur.py).

    On CUDA tensors other than float64, when FUSED_KERNEL is on and triton is installed; the
    torch path stays the reference and the CPU path (the CPU path never imports triton).
    """
    if not FUSED_KERNEL or images.device.type != "cuda" or images.dtype == torch.float64:
        return False
    if not any(lv.kind in ("direct", "spectral") for lv in levels):
        return False
    return importlib.util.find_spec("triton") is not None


def _run_fused(images: Tensor, levels: list[Level], out: Tensor) -> list[Level]:
    """Write every blur level in one fused launch; return levels with those marked ``done``.

    If triton cannot build the kernel for this device, warn once, switch FUSED_KERNEL off and
    return ``levels`` unchanged: the torch path then writes them.
    """
    global FUSED_KERNEL
    from priorscope.kernels import triton_blur

    slots = [k for k, lv in enumerate(levels) if lv.kind in ("direct", "spectral")]
    b, c, h, w = images.shape
    if not triton_blur.fits_grid(b, c, h, w, len(slots), triton_blur.DEFAULT_BLOCKS):
        return levels
    try:
        triton_blur.blur_levels_fused(images, [levels[k].sigma_px for k in slots], out, slots)
    except triton_blur.BUILD_ERRORS as exc:
        FUSED_KERNEL = False
        warnings.warn(
            f"The fused Triton blur kernel could not be built for {images.device} "
            f"({type(exc).__name__}: {str(exc)[:200]}). Blurring with the torch path instead "
            "for the rest of this process; set priorscope.kernels.blur.FUSED_KERNEL = False "
            "to skip the attempt.",
            RuntimeWarning,
            stacklevel=4,
        )
        return levels
    return [Level("done", lv.sigma_px) if k in slots else lv for k, lv in enumerate(levels)]


def _run_levels(images: Tensor, levels: list[Level], out: Tensor) -> None:
    """Fill ``out [B, K, C, H, W]`` with one blurred copy of ``images [B, C, H, W]`` per level."""
    if _fused_kernel_applies(images, levels):
        levels = _run_fused(images, levels, out)
        if all(lv.kind == "done" for lv in levels):
            return
    b, c, h, w = images.shape
    compute = _compute_dtype(images.dtype)
    gains = {
        k: _spectral_gains(h, w, lv.sigma_px, compute, images.device)
        for k, lv in enumerate(levels)
        if lv.kind == "spectral"
    }
    for batch, channels in _chunks(b, c, h, w, images.device):
        src = images[batch, channels]
        # Contiguous planes: a channels-last view (HWC pixels permuted) would stride every pass.
        x = src.to(compute, memory_format=torch.contiguous_format)
        _run_chunk(src, x, levels, gains, out[batch, :, channels])


def _run_chunk(
    images: Tensor,
    x: Tensor,
    levels: list[Level],
    gains: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]],
    out: Tensor,
) -> None:
    """Fill ``out [b, K, c, H, W]`` from ``images [b, c, H, W]`` (``x``: the same in float)."""
    spectrum: SeparableSpectrum | None = None
    for k, level in enumerate(levels):
        slot = out[:, k]
        if level.kind == "done":  # written by the fused kernel
            continue
        if level.kind == "identity":
            slot.copy_(images)
        elif level.kind == "total":
            _store(slot, x.mean(dim=(-2, -1), keepdim=True))
        elif level.kind == "direct":
            sigma = level.sigma_px
            _store(slot, _blur_axis_direct(_blur_axis_direct(x, sigma, -1), sigma, -2))
        else:
            spectrum = spectrum or SeparableSpectrum(x)
            if slot.dtype == x.dtype and slot.is_contiguous():
                spectrum.filtered(gains[k], out=slot)  # saves a copy pass per level
            else:
                _store(slot, spectrum.filtered(gains[k]))


def parse_sigmas(sigmas: object) -> tuple[float, ...]:
    """Return sigmas as a tuple of non-negative floats (inf allowed); raise KernelUsageError."""
    if isinstance(sigmas, (str, bytes)) or not isinstance(sigmas, Iterable):
        raise KernelUsageError(
            f"Expected sigmas as a sequence of non-negative numbers, e.g. [0.01, 0.04, inf]. "
            f"Got {type(sigmas).__name__} {sigmas!r} instead. Wrap a single sigma in a list."
        )
    values = list(sigmas.tolist() if isinstance(sigmas, (Tensor, np.ndarray)) else sigmas)
    if not values:
        raise KernelUsageError("Expected at least one sigma. Got an empty sequence instead.")
    parsed = []
    for i, s in enumerate(values):
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
            raise KernelUsageError(
                f"Expected sigma {i} to be a real number. Got {type(s).__name__} {s!r} instead."
            )
        value = float(s)
        if math.isnan(value) or value < 0:
            raise KernelUsageError(
                f"Expected sigma {i} to be >= 0 (0 = clean, inf = total). Got {value!r} instead."
            )
        parsed.append(value)
    return tuple(parsed)


def check_images(images: object) -> Tensor:
    """Return ``images`` if it is a ``[B, C, H, W]`` uint8 or float tensor; raise KernelError."""
    if not isinstance(images, Tensor):
        raise KernelError(
            f"Expected images as a torch.Tensor [B, C, H, W]. Got {type(images).__name__} "
            "instead. Use blur_ladder_images for a list of PIL images or numpy arrays."
        )
    if images.ndim != 4:
        raise KernelError(
            f"Expected images of shape [B, C, H, W] (4 dims). Got shape {tuple(images.shape)} "
            "instead. Add a batch axis with images.unsqueeze(0) for one image."
        )
    if images.dtype != torch.uint8 and images.dtype not in _FLOAT_DTYPES:
        raise KernelError(
            f"Expected images of dtype uint8, float16, bfloat16, float32 or float64. Got "
            f"{images.dtype} instead. Convert with images.to(torch.float32)."
        )
    if min(images.shape[1:]) == 0:
        raise KernelError(
            f"Expected at least one channel, row and column. Got shape {tuple(images.shape)} "
            "instead."
        )
    return images


def blur_ladder(images: Tensor, sigmas: Iterable[float], *, relative: bool = True) -> Tensor:
    """Return ``[B, K, C, H, W]``: ``images [B, C, H, W]`` blurred at each of the K sigmas.

    With ``relative=True`` each sigma is a fraction of the short side ``min(H, W)``; otherwise
    pixels. ``0`` copies the input, ``inf`` sets every pixel to its channel's mean. The result has
    the input's dtype and device; uint8 is rounded half to even and clamped. Float results are
    within 0.02 grey levels (0-255 scale) of scipy's float64 ``gaussian_filter`` at every pixel.
    Pixels are not checked for NaN or inf: one such pixel spreads over its whole plane on the
    transform path (radius > 8 px), where scipy would spread it over the kernel's reach.
    """
    images = check_images(images)
    values = parse_sigmas(sigmas)
    if not isinstance(relative, bool):
        raise KernelUsageError(f"Expected relative to be True or False. Got {relative!r} instead.")
    b, c, h, w = images.shape
    scale = float(min(h, w)) if relative else 1.0
    pixels = [s * scale for s in values]
    too_wide = [s for s in pixels if math.isfinite(s) and kernel_radius(s) > MAX_RADIUS]
    if too_wide:
        raise KernelUsageError(
            f"Expected blur sigmas of at most {MAX_RADIUS / TRUNCATE:g} px (kernel radius "
            f"{MAX_RADIUS}). Got {too_wide[0]:g} px instead. Use inf for total obfuscation."
        )
    levels = plan_ladder(pixels)
    out = torch.empty((b, len(levels), c, h, w), dtype=images.dtype, device=images.device)
    if b > 0:
        _run_levels(images, levels, out)
    return out


def obfuscate_total(images: Tensor) -> Tensor:
    """Return ``[B, C, H, W]``: every pixel of ``images [B, C, H, W]`` set to its channel's mean.

    The ``total`` condition, and the one definition of a fully obfuscated image: the ladder's
    ``inf`` level itself (same dtype; uint8 rounded half to even).
    """
    return blur_ladder(images, [math.inf], relative=False)[:, 0]
