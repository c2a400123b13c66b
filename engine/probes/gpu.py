"""The ``cuml`` backend: logistic probes through cuML's LogisticRegression, one probe at a time.

Imported only when a run asks for ``--backend cuml`` (never on the CPU path). It follows the
same procedure as the batched torch solver (standardise on the outer training fold, choose C
on the inner validation fold, refit on the whole training fold, permutation probes at their
target's C) so its cells are comparable; ridge and MLP probes of a cuml run use the torch
solvers on the GPU. Probes whose training rows lack a class get :data:`ABSENT_LOGIT` for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from priorscope.engine.errors import UsageError
from priorscope.engine.probes.cells import PERM, ProbeSpec, fold_labels
from priorscope.engine.probes.config import ProbeConfig
from priorscope.engine.probes.linear import ABSENT_LOGIT, F64, LinearModels, _empty


def _cuml() -> Any:
    try:
        import cuml  # noqa: F401
        from cuml.linear_model import LogisticRegression
    except ImportError:
        raise UsageError(
            "Expected cuML for --backend cuml. Got no 'cuml' module. Install the gpu extra "
            "(pip install 'priorscope[gpu]') or use --backend cuda."
        ) from None
    return LogisticRegression


def _fit_one(
    model_cls: Any, z: Any, y: np.ndarray, k: int, c: float, tol: float, max_iter: int
) -> tuple[Any, Any]:
    """Return (W [d, k], b [k]) as cupy arrays; classes absent from ``y`` get ABSENT_LOGIT."""
    import cupy as cp

    present = np.unique(y)
    model = model_cls(C=c, tol=tol, max_iter=max_iter, fit_intercept=True)
    model.fit(z, cp.asarray(y.astype(np.float32)))
    coef = cp.asarray(model.coef_).reshape(len(present) if len(present) > 2 else 1, -1)
    intercept = cp.asarray(model.intercept_).reshape(-1)
    W = cp.zeros((z.shape[1], k), dtype=cp.float64)
    b = cp.full(k, ABSENT_LOGIT, dtype=cp.float64)
    if len(present) == 2:  # binomial: one vector for the second class against the first
        W[:, present[1]], b[present[1]] = coef[0] / 2, intercept[0] / 2
        W[:, present[0]], b[present[0]] = -coef[0] / 2, -intercept[0] / 2
    else:
        W[:, present], b[present] = coef.T, intercept
    return W, b


def fit_logistic_cuml(
    x: torch.Tensor,
    fold: np.ndarray,
    k_folds: int,
    labels: np.ndarray,
    specs: list[ProbeSpec],
    config: ProbeConfig,
) -> LinearModels:
    """Return logistic probes of one site and training condition fitted with cuML."""
    import cupy as cp

    model_cls = _cuml()
    xc = cp.asarray(x.to(torch.float64))
    present = ~torch.isnan(x).any(1).cpu().numpy()
    ks = [s.n_classes for s in specs]
    offsets = np.concatenate([[0], np.cumsum(ks)])
    out = _empty(k_folds, x.shape[1], ks)
    for f in range(k_folds):
        rows = np.flatnonzero(present & (fold != f))
        inner = fold[rows] != (f + 1) % k_folds
        xr = xc[rows]
        mu, sd = xr.mean(0), xr.std(0)
        sd = cp.where(sd > 0, sd, 1.0)
        z = (xr - mu) / sd
        y = fold_labels(specs, labels, rows, config.seed, f)
        chosen: dict[int, float] = {}
        for j, s in enumerate(specs):
            yj = y[:, j]
            if s.role == PERM:
                c = chosen[s.base]
            else:
                c = _choose_c(model_cls, z, yj, inner, s.n_classes, config)
            chosen[j] = c
            ok = yj >= 0
            W, b = _fit_one(
                model_cls,
                z[cp.asarray(ok)],
                yj[ok],
                s.n_classes,
                c,
                config.logistic_tol,
                config.logistic_max_iter,
            )
            W = W / sd[:, None]
            cols = slice(offsets[j], offsets[j + 1])
            out.W[f, :, cols] = torch.as_tensor(W, device=x.device)
            out.b[f, cols] = torch.as_tensor(b - mu @ W, device=x.device)
            out.reg[j, f] = c
    return out


def _choose_c(
    model_cls: Any, z: Any, y: np.ndarray, inner: np.ndarray, k: int, config: ProbeConfig
) -> float:
    """Return the C of the grid with the best accuracy on the validation rows (first on ties)."""
    import cupy as cp

    if len(config.logistic_cs) == 1:
        return float(config.logistic_cs[0])
    fit_rows = inner & (y >= 0)
    val_rows = ~inner & (y >= 0)
    best, best_acc = float(config.logistic_cs[0]), -1.0
    for c in config.logistic_cs:
        W, b = _fit_one(
            model_cls,
            z[cp.asarray(fit_rows)],
            y[fit_rows],
            k,
            c,
            config.logistic_tol,
            config.logistic_max_iter,
        )
        pred = cp.asnumpy((z[cp.asarray(val_rows)] @ W + b).argmax(1))
        acc = float((pred == y[val_rows]).mean()) if val_rows.any() else 0.0
        if acc > best_acc:
            best, best_acc = float(c), acc
    return best


__all__ = ["F64", "fit_logistic_cuml"]
