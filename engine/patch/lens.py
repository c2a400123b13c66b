"""The logit lens with no model: cached ``last`` residual -> stored final norm -> candidate rows.

For every visible example, condition and stored layer it gives the candidates' log-probs at the
answer position as if the model stopped after that layer, normalised over the candidates (the
store keeps only the candidates' LM-head rows; the gold-vs-prior margin does not depend on the
normaliser). From them: the gold-vs-prior margin by layer, and the first layer at which the
final answer (the top candidate at the last layer) leads. At the last decoder layer the lens is
the model's own head, so it must reproduce the stored candidate log-probs: that is checked on
every run and reported as ``check_error``.

The store is read one (layer, condition) chunk of one shard at a time, so memory stays bounded
by the result arrays ([example, condition, layer] floats), whatever the store's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from priorscope.engine.errors import StoreError, UsageError
from priorscope.engine.patch.targets import Targets, store_targets

if TYPE_CHECKING:
    from priorscope.engine.store import Store

NEVER = -2  # first_lead / settled when the final answer never leads (layers start at -1)


@dataclass(frozen=True)
class LensResult:
    """Logit-lens read-outs of ``rows`` (store indices) [example, condition, layer].

    ``gold_logprob``/``prior_logprob``/``margin`` are NaN where the example has no gold or
    prior candidate; ``top`` is the leading candidate's index and ``final`` [example, condition]
    the top candidate at the last stored layer. ``first_lead`` is the first stored layer where
    ``final`` leads and ``settled`` the first from which it leads to the end (``NEVER`` if not).
    ``check_error`` is the largest row-wise relative difference (max |a - b| / max |b|) between
    the lens at the model's last layer and the stored log-probs, both normalised over the
    candidates (NaN when the last layer is not stored).
    """

    rows: np.ndarray
    conditions: tuple[str, ...]
    layers: tuple[int, ...]
    candidates: tuple[str, ...]
    targets: Targets
    gold_logprob: np.ndarray
    prior_logprob: np.ndarray
    margin: np.ndarray
    top: np.ndarray
    top_logprob: np.ndarray
    final: np.ndarray
    first_lead: np.ndarray
    settled: np.ndarray
    check_error: float


def lens_logprobs(residual: np.ndarray, final_norm: Any, unembed: np.ndarray) -> np.ndarray:
    """Return candidate log-probs [..., candidate] (over candidates) of residuals [..., d]."""
    normed = final_norm.apply(residual).astype(np.float64)
    logits = normed @ unembed.astype(np.float64).T
    top = logits.max(axis=-1, keepdims=True)
    lse = top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    return logits - lse


def renormalise(logprob: np.ndarray) -> np.ndarray:
    """Return log-probs [..., candidate] renormalised over the candidates (float64)."""
    lp = np.asarray(logprob, dtype=np.float64)
    top = lp.max(axis=-1, keepdims=True)
    return lp - (top + np.log(np.exp(lp - top).sum(axis=-1, keepdims=True)))


def rowwise_error(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Return max |actual - expected| / max |expected| over the last axis (NaN rows stay NaN).

    A row-wise (norm-wise) relative error: element-wise relative error is ill-conditioned for
    the leading candidate, whose log-prob is a tiny number computed as a difference of large ones.
    """
    diff = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)).max(axis=-1)
    return diff / np.abs(np.asarray(expected, np.float64)).max(axis=-1)


def logit_lens(
    store: Store,
    *,
    conditions: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    prior_condition: str = "total",
) -> LensResult:
    """Return the logit lens of every visible example, condition and stored layer of ``store``."""
    if "last" not in store.reductions:
        raise StoreError(
            f"Expected the 'last' site reduction in {store.path}. Got {store.reductions}. "
            "Capture with --sites last (the default keeps it)."
        )
    conds = tuple(conditions or store.condition_names)
    lays = tuple(store.layers if layers is None else layers)
    for c in conds:
        store.condition_index(c)  # unknown names raise with the known ones
    for v in lays:
        store.layer_index(v)
    rows = store.rows()
    if rows.size == 0:
        raise UsageError(f"Expected committed examples in {store.path}. Got none yet.")
    targets = store_targets(store, prior_condition)
    out, top, last_lp = _read_lens(store, conds, lays, rows, targets)
    undefined = ~targets.defined
    out["gold"][targets.gold < 0] = np.nan
    out["prior"][targets.prior < 0] = np.nan
    margin = out["gold"] - out["prior"]
    margin[undefined] = np.nan
    final, first, settled = _leads(top)
    return LensResult(
        rows=rows,
        conditions=conds,
        layers=lays,
        candidates=tuple(store.candidates),
        targets=targets,
        gold_logprob=out["gold"],
        prior_logprob=out["prior"],
        margin=margin,
        top=top,
        top_logprob=out["top_lp"],
        final=final,
        first_lead=_to_layers(first, lays),
        settled=_to_layers(settled, lays),
        check_error=_check(store, conds, last_lp),
    )


def _read_lens(
    store: Store,
    conds: tuple[str, ...],
    lays: tuple[int, ...],
    rows: np.ndarray,
    targets: Targets,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Return the lens read-outs, chunk by chunk: gold/prior/top log-probs, top, last-layer lp."""
    shape = (len(rows), len(conds), len(lays))
    out = {k: np.full(shape, np.nan, np.float32) for k in ("gold", "prior", "top_lp")}
    top = np.full(shape, -1, np.int64)
    last_lp = np.full((len(rows), len(conds), len(store.candidates)), np.nan)
    final_layer = int(store.model_ref.get("num_layers", max(store.layers) + 1)) - 1
    norm, unembed, r_last = store.final_norm(), store.unembed(), store.reductions.index("last")
    g, p = np.maximum(targets.gold, 0), np.maximum(targets.prior, 0)
    for ci, cond in enumerate(conds):
        for li, layer in enumerate(lays):
            for chunk_rows, values in store.iter_hidden_chunks(layer, cond):
                at = np.searchsorted(rows, chunk_rows)
                lp = lens_logprobs(values[:, r_last], norm, unembed)
                out["gold"][at, ci, li] = lp[np.arange(len(at)), g[at]]
                out["prior"][at, ci, li] = lp[np.arange(len(at)), p[at]]
                top[at, ci, li] = lp.argmax(axis=-1)
                out["top_lp"][at, ci, li] = lp.max(axis=-1)
                if layer == final_layer:
                    last_lp[at, ci] = lp
    return out, top, last_lp


def _leads(top: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (final top [n, c], first leading layer slot, settled slot) from top [n, c, l]."""
    final = top[..., -1]
    leads = top == final[..., None]
    first = np.where(leads.any(axis=-1), leads.argmax(axis=-1), -1)
    # Settled: the first slot after the last layer where the final answer did not lead.
    trailing = leads[..., ::-1].cumprod(axis=-1)[..., ::-1].astype(bool)
    settled = np.where(trailing.any(axis=-1), trailing.argmax(axis=-1), -1)
    return final, first, settled


def _to_layers(slots: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    lays = np.asarray(layers, dtype=np.int64)
    return np.where(slots >= 0, lays[np.maximum(slots, 0)], NEVER)


def _check(store: Store, conds: Sequence[str], last_lp: np.ndarray) -> float:
    """Return the largest row-wise relative error of the last-layer lens vs the stored log-probs."""
    if np.isnan(last_lp).all():
        return float("nan")
    stored = store.outputs("cand_logprob")
    idx = [store.condition_index(c) for c in conds]
    expected = renormalise(stored[:, idx])
    err = rowwise_error(last_lp, expected)
    return float(np.nanmax(err)) if np.isfinite(err).any() else float("nan")


__all__ = ["NEVER", "LensResult", "lens_logprobs", "logit_lens", "renormalise", "rowwise_error"]
