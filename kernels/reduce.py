"""Site reductions of the residual stream over token positions, with a plain reference.

``reduce_sites(hidden [B, S, D], kinds [B, S], reductions) -> [B, R, D]`` (float32) gives, per
row and reduction: ``last``, the state at position -1 (batches are left-padded, so that is the
answer position); ``image_mean`` / ``text_mean``, the mean over the positions whose token kind is
``image_kind`` / ``text_kind``, NaN where a row has none (``image_mean`` without an image).
:func:`reduce_sites_reference` is the same in float64 numpy, one row at a time: the definition
that every faster version (a fused GPU kernel, say) is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from priorscope.kernels.errors import KernelError, KernelUsageError

# numpy and torch load on first use: priorscope.engine.conditions imports REDUCTIONS from here.
if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

REDUCTIONS: tuple[str, ...] = ("last", "image_mean", "text_mean")


def check_reductions(reductions: Sequence[str]) -> list[str]:
    """Return ``reductions`` as a list if every name is known; raise KernelUsageError."""
    names = [reductions] if isinstance(reductions, str) else list(reductions)
    unknown = [r for r in names if r not in REDUCTIONS]
    if unknown or not names:
        got = repr(unknown[0]) if unknown else "none"
        raise KernelUsageError(
            f"Expected site reductions among {', '.join(REDUCTIONS)}. Got {got} instead."
        )
    return names


def _check_shapes(hidden_shape: Sequence[int], kinds_shape: Sequence[int]) -> None:
    if len(hidden_shape) != 3 or tuple(kinds_shape) != tuple(hidden_shape[:2]):
        raise KernelError(
            f"Expected hidden [batch, seq, d] and kinds [batch, seq]. Got hidden "
            f"{tuple(hidden_shape)} and kinds {tuple(kinds_shape)} instead."
        )
    if hidden_shape[1] == 0:
        raise KernelError("Expected at least one position per row. Got seq = 0 instead.")


def reduce_sites(
    hidden: Tensor,
    kinds: Tensor,
    reductions: Sequence[str],
    *,
    image_kind: int,
    text_kind: int,
) -> Tensor:
    """Return the site reductions ``[batch, reduction, d]`` (float32) of ``hidden [batch, seq, d]``.

    ``kinds [batch, seq]`` holds each position's token kind, on ``hidden``'s device.
    """
    import torch

    names = check_reductions(reductions)
    _check_shapes(hidden.shape, kinds.shape)
    h = hidden.float()
    out = []
    for name in names:
        if name == "last":
            out.append(h[:, -1])
            continue
        mask = (kinds == (image_kind if name == "image_mean" else text_kind)).to(h.dtype)
        count = mask.sum(dim=1, keepdim=True)
        total = torch.einsum("bt,btd->bd", mask, h)
        out.append(total / count)  # 0 / 0 gives NaN: no such tokens in that row
    return torch.stack(out, dim=1)


def reduce_sites_reference(
    hidden: np.ndarray,
    kinds: np.ndarray,
    reductions: Sequence[str],
    *,
    image_kind: int,
    text_kind: int,
) -> np.ndarray:
    """Return :func:`reduce_sites` computed in float64 numpy, row by row (the definition)."""
    import numpy as np

    names = check_reductions(reductions)
    h = np.asarray(hidden, dtype=np.float64)
    k = np.asarray(kinds)
    _check_shapes(h.shape, k.shape)
    out = np.full((h.shape[0], len(names), h.shape[2]), np.nan)
    for b in range(h.shape[0]):
        for r, name in enumerate(names):
            if name == "last":
                out[b, r] = h[b, -1]
                continue
            rows = h[b, k[b] == (image_kind if name == "image_mean" else text_kind)]
            if len(rows):
                out[b, r] = rows.sum(axis=0) / len(rows)
    return out


__all__ = ["REDUCTIONS", "check_reductions", "reduce_sites", "reduce_sites_reference"]
