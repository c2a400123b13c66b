"""The blur levels of a ladder as one fused Triton launch: uint8/float in, every level out.

``blur_levels_fused(images [B, C, H, W], sigmas_px, out [B, K, C, H, W], slots)`` writes the
blur of ``images`` at ``sigmas_px[l]`` into ``out[:, slots[l]]``, for every l, in one kernel
launch: read, convert, blur both axes, round and store happen in registers, with no temporary
tensor and no pass per level.

Each level is the separable linear map ``Y = A_h X A_w^T``, where ``A_n`` (n x n) is the
reflect-border Gaussian blur of length n. With ``F`` the sampled, truncated, normalised kernel
(:func:`priorscope.kernels.blur.gaussian_weights`) wrapped onto one mirror period of 2n samples,
``A[i, j] = F[(j - i) mod 2n] + F[(2n - 1 - j - i) mod 2n]`` (a reflected source index ``t``
lands on pixel ``j`` when ``t = j`` or ``t = 2n - 1 - j`` modulo 2n). That is the operator of
blur.py's direct and spectral paths, i.e. scipy's ``gaussian_filter(mode="reflect",
truncate=4.0)``, for any radius, also beyond the image size. ``A`` is banded: row i is zero
outside columns ``[i - r, i + r]`` (reflected sources stay inside that range), so a program
only multiplies the blocks of its band, and small sigmas cost proportionally less.

A program owns a ``BM x BN`` output tile of one image plane at one level. For each block of
``BK`` input columns in its band it forms ``T = A_h[rows, band] @ X[band, block]`` and adds
``T @ A_w^T[block, cols]``, with ``tl.dot`` (fp32 accumulation). Arithmetic precision is
``tf32x3`` by default (three TF32 products: float32-level error on tensor cores); ``ieee`` is
plain float32 FMA. uint8 output is rounded half to even and clamped, like the torch path.

The module imports triton; priorscope.kernels.blur imports it only for CUDA tensors, and only
when triton is installed. With ``TRITON_INTERPRET=1`` set before import the same kernel runs on
CPU tensors (numpy), which is how tests/test_triton_blur.py checks it against the torch path and
scipy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

from priorscope.kernels.blur import gaussian_weights, kernel_radius
from priorscope.kernels.errors import KernelError

# Output tile rows, output tile columns, reduction block: tl.dot needs every side >= 16. 64 rows
# let Hopper use warpgroup MMA (wgmma; 32 or 16 rows compile to mma.sync). Read at each call
# (benchmarks/blur_gpu.py times others); not yet tuned on a GPU.
DEFAULT_BLOCKS = (64, 128, 32)
# tl.dot's arithmetic for float32: tf32x3 keeps float32-level error on tensor cores; ieee is
# plain float32 FMA; tf32 alone is not exact enough for the ladder's 0.02 grey-level bound.
# bf16x3/bf16x6 (newer triton, compiled code only) are offered to benchmarks/blur_gpu.py.
DEFAULT_PRECISION = "tf32x3"
PRECISIONS = ("tf32x3", "ieee", "tf32", "bf16x3", "bf16x6")
# What building the kernel for a device can raise (an older triton, a GPU with less shared
# memory): blur.py then warns and falls back to the torch path.
BUILD_ERRORS: tuple[type[Exception], ...] = (CompilationError, OutOfResources)
# CUDA caps grid axes 1 and 2 at 65535: planes go on axis 0, tiles and levels on 1 and 2.
MAX_GRID_YZ = 65535


def reflect_blur_matrix(n: int, sigma_px: float) -> np.ndarray:
    """Return ``A [n, n]`` (float64): the reflect-border Gaussian blur of length n as a matrix.

    Row i holds the weights pixel i takes from each pixel j; rows sum to 1.
    """
    w = gaussian_weights(sigma_px)
    radius = (w.size - 1) // 2
    folded = np.zeros(2 * n)
    np.add.at(folded, np.arange(-radius, radius + 1) % (2 * n), w)
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return folded[(j - i) % (2 * n)] + folded[(2 * n - 1 - j - i) % (2 * n)]


@lru_cache(maxsize=16)
def _level_matrices(
    n: int, sigmas_px: tuple[float, ...], transpose: bool, device: torch.device
) -> Tensor:
    """Return ``[L, n, n]`` float32 blur matrices on ``device`` (transposed: ``A^T``), cached."""
    mats = [reflect_blur_matrix(n, s) for s in sigmas_px]
    stacked = np.stack([m.T if transpose else m for m in mats])
    return torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32)).to(device)


@triton.jit
def _round_half_even(v):
    """Return ``v`` rounded to the nearest integer, ties to even (torch.round's rule)."""
    low = tl.floor(v)
    frac = v - low
    odd = (low - 2.0 * tl.floor(low * 0.5)) == 1.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, low + 1.0, low)


@triton.jit
def _ladder_kernel(
    x_ptr,
    out_ptr,
    ah_ptr,
    awt_ptr,
    radius_ptr,
    slot_ptr,
    C,
    H,
    W,
    sxb,
    sxc,
    sxh,
    sxw,
    sob,
    sok,
    soc,
    soh,
    sow,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    ROUND_U8: tl.constexpr,
    PRECISION: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    level = tl.program_id(2)
    col_tiles = (W + BN - 1) // BN  # not tl.cdiv: a jit helper, not interpretable once triton
    # was imported without TRITON_INTERPRET (tests/test_triton_blur.py)
    r0 = (tile // col_tiles) * BM
    c0 = (tile % col_tiles) * BN
    radius = tl.load(radius_ptr + level)
    slot = tl.load(slot_ptr + level).to(tl.int64)
    x_base = x_ptr + (plane // C) * sxb + (plane % C) * sxc
    ah = ah_ptr + level.to(tl.int64) * H * H
    awt = awt_ptr + level.to(tl.int64) * W * W
    rows = r0 + tl.arange(0, BM)
    cols = c0 + tl.arange(0, BN)
    ks = tl.arange(0, BK)
    # The band: input rows/columns that reach this tile (aligned down to a block).
    i_lo = (tl.maximum(r0 - radius, 0) // BK) * BK
    i_hi = tl.minimum(r0 + BM + radius, H)
    j_lo = (tl.maximum(c0 - radius, 0) // BK) * BK
    j_hi = tl.minimum(c0 + BN + radius, W)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for j0 in range(j_lo, j_hi, BK):
        jj = j0 + ks
        t = tl.zeros((BM, BK), dtype=tl.float32)
        for i0 in range(i_lo, i_hi, BK):
            ii = i0 + ks
            a = tl.load(
                ah + rows[:, None] * H + ii[None, :],
                mask=(rows[:, None] < H) & (ii[None, :] < H),
                other=0.0,
            )
            x = tl.load(
                x_base + ii[:, None] * sxh + jj[None, :] * sxw,
                mask=(ii[:, None] < H) & (jj[None, :] < W),
                other=0,
            ).to(tl.float32)
            t = tl.dot(a, x, t, input_precision=PRECISION)
        b = tl.load(
            awt + jj[:, None] * W + cols[None, :],
            mask=(jj[:, None] < W) & (cols[None, :] < W),
            other=0.0,
        )
        acc = tl.dot(t, b, acc, input_precision=PRECISION)
    if ROUND_U8:
        acc = tl.minimum(tl.maximum(_round_half_even(acc), 0.0), 255.0)
    out_base = out_ptr + (plane // C) * sob + slot * sok + (plane % C) * soc
    tl.store(
        out_base + rows[:, None] * soh + cols[None, :] * sow,
        acc.to(out_ptr.dtype.element_ty),
        mask=(rows[:, None] < H) & (cols[None, :] < W),
    )


def _check_blocks(blocks: Sequence[int]) -> tuple[int, int, int]:
    """Return (BM, BN, BK) if each is a power of two >= 16; raise KernelError."""
    bm, bn, bk = (int(v) for v in blocks)
    for name, v in (("BM", bm), ("BN", bn), ("BK", bk)):
        if v < 16 or v & (v - 1):
            raise KernelError(
                f"Expected block size {name} to be a power of two >= 16 (tl.dot's minimum). "
                f"Got {v} instead. Pass blocks=(64, 128, 32) or leave the default."
            )
    return bm, bn, bk


def fused_grid(b: int, c: int, h: int, w: int, levels: int, blocks: Sequence[int]) -> tuple:
    """Return the launch grid (planes, tiles, levels) for ``[b, c, h, w]`` images."""
    bm, bn, _ = blocks
    return (b * c, triton.cdiv(h, bm) * triton.cdiv(w, bn), levels)


def fits_grid(b: int, c: int, h: int, w: int, levels: int, blocks: Sequence[int]) -> bool:
    """Return whether one launch covers the images (tiles and levels within CUDA's grid)."""
    _, tiles, n = fused_grid(b, c, h, w, levels, blocks)
    return tiles <= MAX_GRID_YZ and n <= MAX_GRID_YZ and b * c < 2**31


def blur_levels_fused(
    images: Tensor,
    sigmas_px: Sequence[float],
    out: Tensor,
    slots: Sequence[int],
    *,
    blocks: Sequence[int] | None = None,
    precision: str | None = None,
    num_warps: int = 4,
) -> None:
    """Write ``images [B, C, H, W]`` blurred at ``sigmas_px[l]`` (pixels, finite, radius >= 1)
    into ``out[:, slots[l]]`` of ``out [B, K, C, H, W]``, all levels in one launch.

    ``images``: uint8, float16, bfloat16 or float32, any strides; ``out``: the same dtype.
    ``blocks`` (BM, BN, BK) and ``precision`` default to DEFAULT_BLOCKS and DEFAULT_PRECISION.
    The caller (priorscope.kernels.blur) validates images and sigmas; this checks what only
    the fused kernel needs.
    """
    bm, bn, bk = _check_blocks(DEFAULT_BLOCKS if blocks is None else blocks)
    precision = DEFAULT_PRECISION if precision is None else precision
    if precision not in PRECISIONS:
        raise KernelError(f"Expected precision in {PRECISIONS}. Got {precision!r} instead.")
    if images.dtype == torch.float64 or out.dtype != images.dtype:
        raise KernelError(
            f"Expected images and out of one dtype among uint8, float16, bfloat16, float32. "
            f"Got {images.dtype} and {out.dtype} instead. float64 runs on the torch path."
        )
    if len(sigmas_px) != len(slots) or not sigmas_px:
        raise KernelError(
            f"Expected one slot per sigma (at least one). Got {len(sigmas_px)} sigmas and "
            f"{len(slots)} slots instead."
        )
    b, c, h, w = images.shape
    if not fits_grid(b, c, h, w, len(sigmas_px), (bm, bn, bk)):
        raise KernelError(
            f"Expected at most {MAX_GRID_YZ} tiles per plane. Got images {tuple(images.shape)} "
            "instead. Use larger blocks or the torch path."
        )
    sigmas = tuple(float(s) for s in sigmas_px)
    device = images.device
    ah = _level_matrices(h, sigmas, False, device)
    awt = _level_matrices(w, sigmas, True, device)
    radius = torch.tensor([kernel_radius(s) for s in sigmas], dtype=torch.int32, device=device)
    slot = torch.tensor(list(slots), dtype=torch.int32, device=device)
    # Triton launches on the current CUDA device: make it the images' one (cuda:1 ...).
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        _launch(images, out, ah, awt, radius, slot, (bm, bn, bk), precision, num_warps)


def _launch(
    images: Tensor,
    out: Tensor,
    ah: Tensor,
    awt: Tensor,
    radius: Tensor,
    slot: Tensor,
    blocks: tuple[int, int, int],
    precision: str,
    num_warps: int,
) -> None:
    """Launch the kernel over every plane, tile and level (arguments as blur_levels_fused)."""
    b, c, h, w = images.shape
    bm, bn, bk = blocks
    _ladder_kernel[fused_grid(b, c, h, w, radius.numel(), blocks)](
        images,
        out,
        ah,
        awt,
        radius,
        slot,
        c,
        h,
        w,
        *images.stride(),
        *out.stride(),
        BM=bm,
        BN=bn,
        BK=bk,
        ROUND_U8=images.dtype == torch.uint8,
        PRECISION=precision,
        num_warps=num_warps,
    )


__all__ = [
    "BUILD_ERRORS",
    "DEFAULT_BLOCKS",
    "DEFAULT_PRECISION",
    "blur_levels_fused",
    "fits_grid",
    "reflect_blur_matrix",
]
