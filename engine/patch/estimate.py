"""First-order attribution estimates of patching effects, with no model (attribution patching).

For a patch of target run t by source run s at layer L over a position group G, the change of
the gold-vs-prior margin is estimated by its first-order Taylor term around the target run:

    state:  sum over p in G of  grad_t,L[p] . (h_s,L[p] - h_t,L[p])
    write:  sum over p in G of  grad_t,L[p] . ((h_s,L - h_s,L-1)[p] - (h_t,L - h_t,L-1)[p])

where grad_t,L is the gradient of the target run's margin with respect to the residual after
layer L (captured with ``--grad``). Last-token cells use the answer-position gradient and the
``last`` reduction and so cover every example; image and text cells need full sequences. The
estimate is validated against exact replay on the same cells (:func:`compare`): Pearson and
Spearman correlation, sign agreement and top-k overlap, as AtP* recommends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from priorscope.engine.errors import UsageError
from priorscope.engine.patch.replay import LAST, STATE, WRITE, PositionGroup


class GradientSource(Protocol):
    """Where the margin gradients come from: a store captured with ``--grad`` or memory.

    ``grad_last(layer)`` [example, condition, d_model] for the visible examples at a store layer;
    ``fullseq_grad(example)`` [token, fs_condition, fs_layer, d_model] aligned with
    ``store.fullseq(example)``.
    """

    def grad_last(self, layer: int) -> np.ndarray: ...

    def fullseq_grad(self, example: int) -> np.ndarray: ...


@dataclass(frozen=True)
class MemoryGradients:
    """Gradients held in memory: ``last`` [example, condition, layer, d] and full sequences."""

    layers: tuple[int, ...]
    last: np.ndarray
    full: dict[int, np.ndarray]

    def grad_last(self, layer: int) -> np.ndarray:
        return self.last[:, :, self.layers.index(layer)]

    def fullseq_grad(self, example: int) -> np.ndarray:
        if example not in self.full:
            raise UsageError(
                f"Expected full-sequence gradients of example {example}. Got them for "
                f"{sorted(self.full)}. Capture with --grad and --full-seq covering it."
            )
        return self.full[example]


def last_token_estimates(
    hidden: np.ndarray, hidden_prev: np.ndarray | None, grad: np.ndarray
) -> np.ndarray:
    """Return estimates [mode, source, target, example] of last-token patches at one layer.

    ``hidden`` [example, condition, d] is the answer-position residual at layer L,
    ``hidden_prev`` the one at L-1 (None at the embedding, where a layer's write is its state)
    and ``grad`` [example, condition, d] the target runs' margin gradients at layer L.
    """
    g = grad.astype(np.float64)
    dot = np.einsum("ntd,nsd->stn", g, hidden.astype(np.float64))  # g_t . h_s
    self_dot = np.einsum("ttn->tn", dot)
    state = dot - self_dot[None]
    if hidden_prev is None:
        return np.stack([state, state]).astype(np.float32)
    prev = np.einsum("ntd,nsd->stn", g, hidden_prev.astype(np.float64))
    write = (dot - prev) - (self_dot - np.einsum("ttn->tn", prev))[None]
    return np.stack([state, write]).astype(np.float32)


def full_sequence_estimates(
    values: np.ndarray,
    grads: np.ndarray,
    masks: np.ndarray,
    layers: Sequence[int],
) -> np.ndarray:
    """Return estimates [mode, source, target, layer, group] of one full-sequence example.

    ``values`` and ``grads`` are [token, condition, layer, d] (the store's fs axes), ``masks``
    [group, token] bool. Write mode at layer L needs L-1 among ``layers``; otherwise NaN (at the
    embedding the write is the state).
    """
    g = grads.astype(np.float64)
    v = values.astype(np.float64)
    dot = np.einsum("ptld,psld->pstl", g, v)  # [token, source, target, layer]
    m = masks.astype(np.float64)
    summed = np.einsum("gp,pstl->stlg", m, dot)
    self_sum = np.einsum("ttlg->tlg", summed)
    state = summed - self_sum[None]
    write = np.full_like(state, np.nan)
    for li, layer in enumerate(layers):
        if layer == -1:
            write[:, :, li] = state[:, :, li]
        elif layer - 1 in layers:
            pi = list(layers).index(layer - 1)
            prev = np.einsum("ptd,psd->pst", g[:, :, li], v[:, :, pi])
            prev_sum = np.einsum("gp,pst->stg", m, prev)
            prev_self = np.einsum("ttg->tg", prev_sum)
            write[:, :, li] = (summed[:, :, li] - prev_sum) - (self_sum[:, li] - prev_self)[None]
    return np.stack([state, write]).astype(np.float32)


def group_masks(kind: np.ndarray, groups: Sequence[PositionGroup]) -> np.ndarray:
    """Return bool masks [group, token] of the non-last groups (the last group is all False)."""
    out = np.zeros((len(groups), len(kind)), dtype=bool)
    for gi, group in enumerate(groups):
        if group.name != LAST:
            out[gi] = group.mask(kind)
    return out


@dataclass(frozen=True)
class Agreement:
    """How well estimates match exact effects on the same cells (NaN cells left out)."""

    n_cells: int
    pearson: float
    spearman: float
    sign_agreement: float
    top_k: int
    top_k_overlap: float

    def to_json(self) -> dict[str, float | int]:
        return {
            "n_cells": self.n_cells,
            "pearson": self.pearson,
            "spearman": self.spearman,
            "sign_agreement": self.sign_agreement,
            "top_k": self.top_k,
            "top_k_overlap": self.top_k_overlap,
        }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Return average ranks (ties share the mean rank), as scipy.stats.rankdata does."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for i in range(1, len(x) + 1):
        if i == len(x) or sorted_x[i] != sorted_x[start]:
            ranks[order[start:i]] = (start + i - 1) / 2.0
            start = i
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def compare(exact: np.ndarray, estimate: np.ndarray, top_k: int = 20) -> Agreement:
    """Return the agreement of ``estimate`` with ``exact`` over the cells where both are finite.

    Sign agreement counts cells whose exact effect is not zero; the top-k overlap is the share
    of the k cells of largest |exact| that are also among the k of largest |estimate|.
    """
    a, b = np.asarray(exact, np.float64).ravel(), np.asarray(estimate, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n < 2:
        nan = float("nan")
        return Agreement(n, nan, nan, nan, 0, nan)
    nonzero = a != 0
    sign = float((np.sign(a[nonzero]) == np.sign(b[nonzero])).mean()) if nonzero.any() else 1.0
    k = min(top_k, n)
    top_a = set(np.argsort(-np.abs(a), kind="mergesort")[:k].tolist())
    top_b = set(np.argsort(-np.abs(b), kind="mergesort")[:k].tolist())
    return Agreement(
        n_cells=n,
        pearson=_pearson(a, b),
        spearman=_pearson(_ranks(a), _ranks(b)),
        sign_agreement=sign,
        top_k=k,
        top_k_overlap=len(top_a & top_b) / k,
    )


__all__ = [
    "STATE",
    "WRITE",
    "Agreement",
    "GradientSource",
    "MemoryGradients",
    "compare",
    "full_sequence_estimates",
    "group_masks",
    "last_token_estimates",
]
