"""Linear probes, thousands at a time: ridge classification and multinomial logistic regression.

One pass per (layer, site, condition, fold) serves every target, control, permutation and
regularisation strength. The training rows are standardised per feature, their Gram matrix
``Z^T Z`` is eigendecomposed once (``V diag(lam) V^T``, or through the ``n x n`` kernel when
there are fewer rows than features), and the data are rotated into that basis, ``P = Z V``,
whose columns are orthogonal with squared norms ``lam``. There:

- ridge for every target and every ``alpha`` is a diagonal solve, ``P^T y / (lam + alpha)``
  (on a subset of the rows, e.g. without the inner validation fold, a Woodbury update of it);
- multinomial logistic regression (sklearn's objective, ``sum loss + ||W||^2 / (2 C)``, the
  intercept unpenalised) has the diagonal majoriser of its Hessian ``lam / 2 + 1 / C``
  (Boehning's bound), which serves as the preconditioner of a batched L-BFGS over all probes
  at once; a step that does not decrease a probe's objective is replaced by the majorisation
  step, which always does. The start is one such step from zero: a ridge solve.

Everything runs in float64 on one thread, so a probe's result does not depend on which process
or how many threads computed it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from priorscope.engine.probes.cells import PERM, ProbeSpec, fold_labels
from priorscope.engine.probes.config import ProbeConfig

F64 = torch.float64
# Relative size (to the largest eigenvalue) of the spectral norm of the off-diagonal part of
# P^T P that a float32 basis leaves: measured ~5e-6 at d = 2048 (Gram eigendecomposition in
# float32); twice that is added to a float32 basis's diagonal so it stays an upper bound.
F32_MARGIN = 1e-5
# Logit of a class a probe never saw in training: log(1e-15), the floor sklearn's log_loss clips at.
ABSENT_LOGIT = -34.538776394910684


@dataclass
class Basis:
    """Standardisation and eigenbasis of one training row set.

    ``mu``, ``sigma`` [d]: per-feature mean and scale of the rows; ``V`` [d, r] eigenvectors and
    ``lam`` [r] eigenvalues of ``Z^T Z`` (r = min(n, d), descending); ``P`` [n, r] the rotated
    standardised rows (centred, so ``P^T 1 = 0`` and ``P^T P = diag(lam)``).
    """

    mu: torch.Tensor
    sigma: torch.Tensor
    V: torch.Tensor
    lam: torch.Tensor
    P: torch.Tensor

    def raw_weights(
        self, coef: torch.Tensor, intercept: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (W [d, cols], b [cols]) acting on raw features from basis coefficients [r, cols]."""
        w = (self.V.to(F64) @ coef) / self.sigma[:, None]
        return w, intercept - self.mu @ w


def make_basis(x: torch.Tensor, dtype: torch.dtype = F64) -> Basis:
    """Return the Basis of training rows ``x`` [n, d].

    The standardisation is always computed in float64. With ``dtype`` float32 the basis is kept
    in float32 and, when n >= d, also computed in float32 (Gram, eigendecomposition, ``P``),
    about twice as fast, for solvers that only need it as a well-conditioned coordinate system
    (logistic regression): ``V`` is then orthonormal to float32 precision, ``lam`` holds the
    exact squared column norms of ``P`` (float64) plus a margin for the tiny off-diagonal part
    of ``P^T P`` (see :data:`F32_MARGIN`). Ridge solves need the float64 basis.
    """
    x64 = x.to(F64)
    var, mu = torch.var_mean(x64, dim=0, correction=0)
    sigma = torch.sqrt(var)
    # A constant feature carries nothing; scale 1 keeps it at zero instead of dividing by 0.
    sigma = torch.where(sigma > 1e-12 * (1.0 + mu.abs()), sigma, torch.ones_like(sigma))
    n, d = x.shape
    # The n x n kernel path (n < d) stays in float64: it is cheap there, and V = Z^T U / sqrt(lam)
    # would lose orthonormality in the small directions at float32.
    work = dtype if n >= d else F64
    if work == F64:
        z = (x64 - mu) / sigma
    else:  # standardised in the working precision: no float64 copy of the rows
        del x64
        z = (x.to(work) - mu.to(work)) / sigma.to(work)
    if n >= d:
        lam, V = torch.linalg.eigh(z.T @ z)
        lam, V = lam.flip(0).clamp_min(0.0), V.flip(1)
        P = z @ V
    else:
        # Fewer rows than features: the n x n kernel has the same non-zero spectrum and its
        # eigenvectors give the row-space basis V = Z^T U / sqrt(lam) at a fraction of the cost.
        lam, U = torch.linalg.eigh(z @ z.T)
        lam, U = lam.flip(0), U.flip(1)
        keep = lam > lam[0].clamp_min(1e-300) * 1e-12
        lam, U = lam[keep], U[:, keep]
        V = (z.T @ U) / torch.sqrt(lam)
        P = U * torch.sqrt(lam)
    if dtype != F64:
        P, V = P.to(dtype), V.to(dtype)
        # Exact squared column norms, plus a margin for the off-diagonal part of P^T P that
        # float32 rotations leave, so that diag(lam) still bounds P^T P (the majoriser's need).
        lam = (P * P).sum(0, dtype=F64)
        if lam.numel():  # no direction left (constant features): nothing to bound
            lam = lam + F32_MARGIN * lam.max()
    return Basis(mu, sigma, V, lam.to(F64), P)


def one_hot_pm(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Return {-1, +1} one-vs-rest codes [n, k] of ``labels`` [n] (sklearn RidgeClassifier's)."""
    y = -torch.ones(labels.shape[0], k, dtype=F64)
    y[torch.arange(labels.shape[0]), labels.long()] = 1.0
    return y


@dataclass
class LogisticProblem:
    """A batch of multinomial logistic probes sharing one basis.

    ``labels`` [n, q] int (-1: row not in that probe's loss); ``k`` [q] classes per probe;
    ``inv_c`` [q] the L2 strength ``1 / C``. Columns of the parameters are probe-major:
    probe j owns columns ``offsets[j] : offsets[j] + k[j]``.

    Two-class probes get twice the strength: with one weight vector per class the symmetric
    optimum splits ``w = w1 - w0`` in halves, so this makes their penalty sklearn's binomial
    ``||w||^2 / (2 C)``. A class without training rows is left out of the softmax (its
    parameters stay zero) and gets the logit :data:`ABSENT_LOGIT` when predicting.
    """

    P: torch.Tensor
    lam: torch.Tensor
    labels: torch.Tensor
    k: list[int]
    inv_c: torch.Tensor

    def __post_init__(self) -> None:
        # P^T laid out contiguously: the gradient's product is twice as fast as through P.T.
        self.PT = self.P.T.contiguous()
        self.offsets = [0]
        for kj in self.k:
            self.offsets.append(self.offsets[-1] + kj)
        self.weights = (self.labels >= 0).to(F64)  # [n, q]
        self.inv_c = self.inv_c * torch.tensor(
            [2.0 if kj == 2 else 1.0 for kj in self.k], dtype=F64
        )
        present = [
            torch.bincount(self.labels[:, j][self.labels[:, j] >= 0].long(), minlength=kj) > 0
            for j, kj in enumerate(self.k)
        ]
        self.present = torch.cat(present) if present else torch.zeros(0, dtype=torch.bool)


class _Batch:
    """Column bookkeeping of a subset of a problem's probes (probe-major columns).

    Per-probe sums of column values are a product with the 0/1 matrix ``S`` [cols, probes]
    (deterministic, one call); runs of consecutive probes with equal class counts share one
    batched softmax.
    """

    def __init__(self, problem: LogisticProblem, probes: list[int]) -> None:
        self.probes = probes
        self.sizes = [problem.k[j] for j in probes]
        self.offsets = [0]
        for kj in self.sizes:
            self.offsets.append(self.offsets[-1] + kj)
        owner = torch.repeat_interleave(torch.arange(len(probes)), torch.tensor(self.sizes))
        self.S = torch.zeros(self.offsets[-1], len(probes), dtype=F64)
        self.S[torch.arange(self.offsets[-1]), owner] = 1.0
        self.cols = torch.cat(
            [torch.arange(problem.offsets[j], problem.offsets[j + 1]) for j in probes]
        )
        idx = torch.tensor(probes)
        self.labels = problem.labels[:, idx].long()
        self.weights = problem.weights[:, idx]
        self.inv_c = problem.inv_c[idx] @ self.S.T
        present = problem.present[self.cols]
        self.absent = torch.where(present, 0.0, float("-inf")).to(F64)
        self.any_absent = not bool(present.all())
        self.runs: list[tuple[int, int, int, int]] = []  # (first column, first probe, count, k)
        for i, kj in enumerate(self.sizes):
            last = self.runs[-1] if self.runs else None
            if last is not None and last[3] == kj:
                self.runs[-1] = (last[0], last[1], last[2] + 1, kj)
            else:
                self.runs.append((self.offsets[i], i, 1, kj))

    def per_probe(self, col_values: torch.Tensor) -> torch.Tensor:
        """Return per-probe sums [probes] of column values [cols]."""
        return col_values @ self.S

    def per_col(self, probe_values: torch.Tensor) -> torch.Tensor:
        """Return probe values [probes] spread over their columns [cols]."""
        return self.S @ probe_values

    def local_columns(self, keep: torch.Tensor) -> torch.Tensor:
        """Return the local column indices of local probes ``keep`` (a mask or indices)."""
        if keep.dtype == torch.bool:
            keep = torch.nonzero(keep).flatten()
        return torch.cat(
            [torch.arange(self.offsets[i], self.offsets[i + 1]) for i in keep.tolist()]
        )


def loss_grad(
    problem: LogisticProblem, theta: torch.Tensor, batch: _Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (objective [probes], gradient [r + 1, cols]) of ``batch``'s probes at ``theta``.

    ``theta`` [r + 1, cols] holds those probes' columns (basis coefficients, then the intercept).
    """
    P, n = problem.P, problem.P.shape[0]
    # Products with P run in P's precision (float32 for a float32 basis); the rest in float64.
    logits = (P @ theta[:-1].to(P.dtype)).to(F64) + theta[-1]
    if batch.any_absent:
        logits = logits + batch.absent
    resid = torch.empty_like(logits)
    loss = torch.empty(len(batch.probes), dtype=F64)
    for c0, p0, m, k in batch.runs:
        block = logits[:, c0 : c0 + m * k].reshape(n, m, k)
        shifted = block - block.amax(2, keepdim=True)
        e = torch.exp(shifted)
        total = e.sum(2, keepdim=True)
        logp = shifted - torch.log(total)  # log-softmax, with its exponentials reused below
        y = batch.labels[:, p0 : p0 + m].clamp_min(0).unsqueeze(2)
        w = batch.weights[:, p0 : p0 + m]
        loss[p0 : p0 + m] = -(w * logp.gather(2, y).squeeze(2)).sum(0)
        r = (e / total).scatter_add_(2, y, -torch.ones_like(y, dtype=F64))
        resid[:, c0 : c0 + m * k] = (r * w.unsqueeze(2)).reshape(n, m * k)
    coef = theta[:-1]
    loss += batch.per_probe(0.5 * (coef * coef).sum(0) * batch.inv_c)
    back = (problem.PT @ resid.to(P.dtype)).to(F64)
    grad = torch.cat([back + coef * batch.inv_c, resid.sum(0, keepdim=True)])
    return loss, grad


def majoriser(problem: LogisticProblem, batch: _Batch) -> torch.Tensor:
    """Return the diagonal bound [r + 1, cols] on the Hessian of ``batch``'s objectives.

    Boehning: the softmax Hessian is at most I/2, so the loss Hessian is at most
    ``P^T W P / 2`` (block diagonal over classes). With every row weighted, ``P^T P = diag(lam)``
    and the intercept decouples (``P^T 1 = 0``); with some rows left out, ``2 diag(lam, n)``
    still bounds ``[P, 1]^T W [P, 1]``, so those probes use the doubled bound.
    """
    n_rows = batch.per_col(batch.weights.sum(0))
    partial = (n_rows < problem.P.shape[0]).to(F64)
    factor = 0.5 * (1.0 + partial)
    feat = factor[None, :] * problem.lam[:, None] + batch.inv_c[None, :]
    return torch.cat([feat, (factor * n_rows.clamp_min(1.0))[None, :]])


def start(problem: LogisticProblem, batch: _Batch) -> torch.Tensor:
    """Return the warm start: class log-priors as intercepts, then one majorisation step.

    From zero coefficients that step is a ridge solve in the eigenbasis (the residuals are the
    centred one-hot codes), which is where the logistic fit starts.
    """
    theta = torch.zeros(problem.P.shape[1] + 1, batch.offsets[-1], dtype=F64)
    for i, kj in enumerate(batch.sizes):
        y = batch.labels[:, i]
        counts = torch.bincount(y[y >= 0], minlength=kj).to(F64)
        prior = torch.where(counts > 0, torch.log((counts + 0.5) / (counts + 0.5).sum()), 0.0)
        theta[-1, batch.offsets[i] : batch.offsets[i + 1]] = prior
    _, grad = loss_grad(problem, theta, batch)
    theta[:-1] -= grad[:-1] / majoriser(problem, batch)[:-1]
    return theta


@dataclass
class LogisticFit:
    """Solutions of a LogisticProblem: ``theta`` [r + 1, cols], objective and iterations [q]."""

    theta: torch.Tensor
    objective: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor


History = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _two_loop(g: torch.Tensor, hist: History, inv_m: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """Return the L-BFGS direction -H g per probe, with H0 = the inverse majoriser, scaled.

    The scale is the usual one of L-BFGS (``s^T y / y^T M^-1 y`` of the newest pair), taken in
    the majoriser's metric: since the majoriser bounds the Hessian it is at least 1, and it
    grows as the fit becomes confident and the true curvature falls below Boehning's bound.
    """
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(hist):
        a = rho * batch.per_probe((s * q).sum(0))
        q -= batch.per_col(a)[None, :] * y
        alphas.append(a)
    _, y_new, rho_new = hist[-1]
    yy = batch.per_probe((y_new * y_new * inv_m).sum(0))
    scale = torch.where(
        (rho_new > 0) & (yy > 0), 1.0 / (rho_new * yy.clamp_min(1e-300)), torch.ones_like(yy)
    ).clamp_min(1.0)
    r = q * inv_m * batch.per_col(scale)[None, :]
    for (s, y, rho), a in zip(hist, reversed(alphas), strict=True):
        b = rho * batch.per_probe((y * r).sum(0))
        r += batch.per_col(a - b)[None, :] * s
    return -r


@dataclass
class _State:
    """The active probes of a solve: parameters, objectives, gradients, bounds, history."""

    batch: _Batch
    theta: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    bound: torch.Tensor
    hist: History

    def keep(self, problem: LogisticProblem, keep: torch.Tensor) -> _State:
        """Return the state restricted to local probes ``keep`` (indices)."""
        cols = self.batch.local_columns(keep)
        return _State(
            _Batch(problem, [self.batch.probes[i] for i in keep.tolist()]),
            self.theta[:, cols],
            self.f[keep],
            self.g[:, cols],
            self.bound[:, cols],
            [(s[:, cols], y[:, cols], rho[keep]) for s, y, rho in self.hist],
        )


def solve_logistic(
    problem: LogisticProblem,
    max_iter: int = 200,
    tol: float = 1e-6,
    memory: int = 8,
    init: torch.Tensor | None = None,
) -> LogisticFit:
    """Return the minimisers of every probe's objective, solved together.

    ``init`` [r + 1, cols] warm-starts the probes whose columns are not nan (the others start
    from the ridge step).
    A probe stops when one more majorisation step would lower its objective by less than
    ``tol`` relative (``g^T M^-1 g / 2 <= tol * max(1, |f|)``) or after ``max_iter`` steps.
    Probes that stop leave the batch, so the work shrinks as they converge.
    """
    q = len(problem.k)
    batch = _Batch(problem, list(range(q)))
    theta_all = start(problem, batch)
    if init is not None:
        given = ~torch.isnan(init[0])
        theta_all[:, given] = init[:, given]
    f, g = loss_grad(problem, theta_all, batch)
    state = _State(batch, theta_all.clone(), f, g, majoriser(problem, batch), [])
    fit = LogisticFit(
        theta_all,
        torch.zeros(q, dtype=F64),
        torch.zeros(q, dtype=torch.int64),
        torch.zeros(q, dtype=torch.bool),
    )
    for it in range(max_iter + 1):
        gain = 0.5 * state.batch.per_probe((state.g * state.g / state.bound).sum(0))
        done = gain <= tol * torch.clamp(state.f.abs(), min=1.0)
        if it == max_iter:
            done = torch.ones_like(done)
        if bool(done.any()):
            fit.theta[:, state.batch.cols] = state.theta
            idx = torch.tensor(state.batch.probes)[done]
            fit.objective[idx], fit.iterations[idx] = state.f[done], it
            fit.converged[idx] = it < max_iter
            keep = torch.nonzero(~done).flatten()
            if keep.numel() == 0:
                break
            state = state.keep(problem, keep)
        state = _step(problem, state, memory)
    fit.theta[-1, ~problem.present] = ABSENT_LOGIT
    return fit


def _step(problem: LogisticProblem, st: _State, memory: int) -> _State:
    """Return the state after one L-BFGS step per probe, with a majorisation fallback."""
    batch, g = st.batch, st.g
    inv_m = 1.0 / st.bound
    mm = -g * inv_m
    d = _two_loop(g, st.hist, inv_m, batch) if st.hist else mm.clone()
    slope = batch.per_probe((g * d).sum(0))
    bad = slope >= 0  # not a descent direction: use the majorisation step
    if bool(bad.any()):
        cols = batch.local_columns(bad)
        d[:, cols] = mm[:, cols]
        slope = batch.per_probe((g * d).sum(0))
    f_new, g_new = loss_grad(problem, st.theta + d, batch)
    failed = f_new > st.f + 1e-4 * slope
    if bool(failed.any()):
        # The majorisation step decreases each objective by at least g^T M^-1 g / 2.
        idx = torch.nonzero(failed).flatten()
        cols = batch.local_columns(idx)
        d[:, cols] = mm[:, cols]
        sub = _Batch(problem, [batch.probes[i] for i in idx.tolist()])
        f_sub, g_sub = loss_grad(problem, st.theta[:, cols] + d[:, cols], sub)
        f_new[idx] = f_sub
        g_new[:, cols] = g_sub
    y = g_new - g
    sy = batch.per_probe((d * y).sum(0))
    rho = torch.where(sy > 1e-300, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
    hist = [*st.hist, (d, y, rho)][-memory:]
    return _State(batch, st.theta + d, f_new, g_new, st.bound, hist)


# Precision of the basis each kind is solved in (see make_basis).
BASIS_DTYPE: dict[str, torch.dtype] = {"ridge": F64, "logistic": torch.float32}


# ---- one (site, training condition): every fold, probe and regularisation strength ----------


@dataclass
class LinearModels:
    """Fitted probes of one kind: per fold ``W`` [k, d, cols] and ``b`` [k, cols] on raw features.

    ``reg`` [probes, k] is the regularisation chosen per probe and fold (ridge alpha or
    logistic C); ``iterations`` [probes, k] the solver steps (0 for ridge).
    """

    W: torch.Tensor
    b: torch.Tensor
    reg: torch.Tensor
    iterations: torch.Tensor

    def predict(self, x: torch.Tensor, fold: int) -> torch.Tensor:
        """Return class scores [m, cols] of raw rows ``x`` [m, d] for held-out fold ``fold``."""
        return x.to(F64) @ self.W[fold] + self.b[fold]


def _choose(acc: torch.Tensor, prefer_last: bool) -> torch.Tensor:
    """Return the grid index [probes] of the best validation accuracy ``acc`` [grid, probes].

    Ties go to the strongest regularisation: the last alpha (``prefer_last``) or the first C.
    """
    grid = acc.shape[0]
    order = torch.arange(grid - 1, -1, -1) if prefer_last else torch.arange(grid)
    best = acc[order].argmax(0)  # argmax returns the first maximum along the reordered grid
    return order[best]


def ridge_subset(
    basis: Basis, keep: torch.Tensor, y: torch.Tensor, alphas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (coef [a, r, cols], intercept [a, cols]): ridge on the basis rows ``keep`` only.

    ``y`` [kept rows, cols]. The kept rows' centred Gram is ``diag(lam) - U^T U`` with ``U`` the
    left-out rows and the kept rows' mean, so Woodbury's identity gives every alpha from the
    basis already computed, at the cost of a (left-out x left-out) solve instead of a new
    eigendecomposition. With every row kept this is the plain diagonal solve.
    """
    P = basis.P[keep]
    m, ybar = P.mean(0), y.mean(0)
    rhs = P.T @ (y - ybar)
    n_out = int((~keep).sum())
    if n_out == 0:
        coef = rhs[None] / (basis.lam[None, :, None] + alphas[:, None, None])
        return coef, ybar.expand(len(alphas), -1).clone()
    U = torch.cat([basis.P[~keep], (P.shape[0] ** 0.5) * m[None, :]])
    coefs = []
    for alpha in alphas:
        inv_d = 1.0 / (basis.lam + alpha)
        ud = U * inv_d
        if U.shape[0] < basis.lam.shape[0] // 2:
            M = torch.eye(U.shape[0], dtype=F64) - ud @ U.T
            s = torch.cholesky_solve(ud @ rhs, torch.linalg.cholesky(M))
            coefs.append(inv_d[:, None] * (rhs + U.T @ s))
        else:  # too many rows left out for Woodbury to pay: solve the kept rows' system
            Pc = P - m
            A = Pc.T @ Pc + alpha * torch.eye(P.shape[1], dtype=F64)
            coefs.append(torch.cholesky_solve(rhs, torch.linalg.cholesky(A)))
    coef = torch.stack(coefs)
    return coef, ybar[None, :] - torch.einsum("r,arc->ac", m, coef)


def ridge_alpha_index(
    basis: Basis,
    inner: torch.Tensor,
    y_in: torch.Tensor,
    y_val: torch.Tensor,
    k: list[int],
    alphas: torch.Tensor,
) -> torch.Tensor:
    """Return the chosen alpha index [probes]: ridge fits on the ``inner`` basis rows, scored on
    the others (``y_val`` their labels)."""
    acc = torch.zeros(len(alphas), len(k), dtype=F64)
    P_val = basis.P[~inner]
    inner_idx = torch.nonzero(inner).flatten()
    for rows, probes in _row_groups(y_in):
        keep = torch.zeros_like(inner)
        keep[inner_idx[rows]] = True
        y = torch.cat([one_hot_pm(y_in[rows, j], k[j]) for j in probes], 1)
        coef, intercept = ridge_subset(basis, keep, y, alphas)
        scores = P_val @ coef + intercept[:, None, :]  # [alphas, m, cols]
        sizes = [k[j] for j in probes]
        for j, block in zip(probes, torch.split(scores, sizes, dim=2), strict=True):
            ok = y_val[:, j] >= 0
            if bool(ok.any()):
                acc[:, j] = (block.argmax(2)[:, ok] == y_val[ok, j][None]).to(F64).mean(1)
    return _choose(acc, prefer_last=True)


def _row_groups(y: torch.Tensor) -> list[tuple[torch.Tensor, list[int]]]:
    """Return (labelled rows, probes) groups: probes labelled on the same rows share a solve."""
    groups: dict[bytes, tuple[torch.Tensor, list[int]]] = {}
    for j in range(y.shape[1]):
        mask = y[:, j] >= 0
        key = mask.cpu().numpy().tobytes()
        if key not in groups:
            groups[key] = (torch.nonzero(mask).flatten(), [])
        groups[key][1].append(j)
    return list(groups.values())


def ridge_fit(
    basis: Basis, y: torch.Tensor, k: list[int], alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return raw-feature ridge classifiers (W [d, cols], b [cols]), one alpha per probe.

    ``y`` [basis rows, probes]; a probe is fitted on its labelled rows (standardised, like every
    probe of the fold, on all the fold's training rows).
    """
    cols_all = sum(k)
    coef = torch.zeros(basis.P.shape[1], cols_all, dtype=F64)
    intercept = torch.zeros(cols_all, dtype=F64)
    offsets = [0, *torch.cumsum(torch.tensor(k), 0).tolist()]
    for rows, probes in _row_groups(y):
        keep = torch.zeros(y.shape[0], dtype=torch.bool)
        keep[rows] = True
        codes = torch.cat([one_hot_pm(y[rows, j], k[j]) for j in probes], 1)
        sizes = [k[j] for j in probes]
        for value in sorted({float(alpha[j]) for j in probes}):
            members = [i for i, j in enumerate(probes) if float(alpha[j]) == value]
            local = torch.cat([torch.arange(sum(sizes[:i]), sum(sizes[: i + 1])) for i in members])
            c, b0 = ridge_subset(basis, keep, codes[:, local], torch.tensor([value], dtype=F64))
            dest = torch.cat(
                [torch.arange(offsets[probes[i]], offsets[probes[i] + 1]) for i in members]
            )
            coef[:, dest], intercept[dest] = c[0], b0[0]
    return basis.raw_weights(coef, intercept)


def logistic_fit(
    basis: Basis,
    y: torch.Tensor,
    k: list[int],
    cs: torch.Tensor,
    max_iter: int,
    tol: float,
    init: torch.Tensor | None = None,
) -> tuple[LogisticFit, torch.Tensor, torch.Tensor]:
    """Return (fit, W [d, cols], b [cols]) of logistic probes with labels ``y``, one C per probe."""
    problem = LogisticProblem(basis.P, basis.lam, y, k, 1.0 / cs)
    fit = solve_logistic(problem, max_iter=max_iter, tol=tol, init=init)
    W, b = basis.raw_weights(fit.theta[:-1], fit.theta[-1])
    return fit, W, b


def _logistic_c_index(
    basis: Basis,
    inner: torch.Tensor,
    y_in: torch.Tensor,
    y_val: torch.Tensor,
    k: list[int],
    cs: torch.Tensor,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Return (chosen C index [probes], each probe's solution at it [r + 1, k] in the basis).

    Every probe at every C is solved in one batch on the ``inner`` basis rows (centred;
    ``diag(lam)`` still bounds their Gram) and scored on the rest. The solutions, moved to the
    uncentred basis coordinates, warm-start the refit on all training rows.
    """
    q, g = len(k), len(cs)
    P = basis.P[inner].to(F64)
    m = P.mean(0)
    labels = y_in.repeat_interleave(g, dim=1)
    ks = [kj for kj in k for _ in range(g)]
    centred = (P - m).to(basis.P.dtype)
    del P
    problem = LogisticProblem(centred, basis.lam, labels, ks, 1.0 / cs.repeat(q))
    fit = solve_logistic(problem, max_iter=max_iter, tol=tol)
    scores = (basis.P[~inner].to(F64) - m) @ fit.theta[:-1] + fit.theta[-1]
    acc = torch.zeros(g, q, dtype=F64)
    for col, block in enumerate(torch.split(scores, ks, dim=1)):
        j, c = divmod(col, g)
        ok = y_val[:, j] >= 0
        if bool(ok.any()):
            acc[c, j] = (block[ok].argmax(1) == y_val[ok, j]).to(F64).mean()
    idx = _choose(acc, prefer_last=False)
    offsets = [0, *torch.cumsum(torch.tensor(ks), 0).tolist()]
    starts = []
    for j in range(q):
        col = j * g + int(idx[j])
        theta = fit.theta[:, offsets[col] : offsets[col + 1]].clone()
        theta[-1] -= m @ theta[:-1]  # (P - m) U + b == P U + (b - m U)
        starts.append(theta)
    return idx, starts


def fit_linear_group(
    x: torch.Tensor,
    fold: np.ndarray,
    k_folds: int,
    labels: np.ndarray,
    specs: list[ProbeSpec],
    config: ProbeConfig,
    kinds: tuple[str, ...],
) -> dict[str, LinearModels]:
    """Return ridge and/or logistic probes of one site and training condition, every fold.

    ``x`` [n, d] raw training-condition rows (nan rows are absent), ``labels`` [n, label sets]
    the training condition's labels. Per outer fold f, regularisation is chosen on inner fold
    (f + 1) % k by models fitted on the remaining folds, then the probe is refitted on every
    fold but f. Permutation probes reuse their target's choice. One eigendecomposition per
    fold serves both: the inner fits are solved in the outer fold's basis (so they use its
    standardisation, computed from training rows only).
    """
    present = ~torch.isnan(x).any(1).cpu().numpy()
    ks = [s.n_classes for s in specs]
    own = [j for j, s in enumerate(specs) if s.role != PERM]
    own_sets = [specs[j].train_on for j in own]
    out = {kind: _empty(k_folds, x.shape[1], ks) for kind in kinds}
    for f in range(k_folds):
        out_rows = np.flatnonzero(present & (fold != f))
        rows_x = x[torch.from_numpy(out_rows)]
        bases = {kind: make_basis(rows_x, BASIS_DTYPE[kind]) for kind in kinds}
        fold_data = _FoldData(
            bases=bases,
            inner=torch.from_numpy(fold[out_rows] != (f + 1) % k_folds).to(x.device),
            y_out=torch.from_numpy(fold_labels(specs, labels, out_rows, config.seed, f)).to(
                x.device
            ),
            own_labels=torch.from_numpy(labels[np.ix_(out_rows, own_sets)].astype(np.int64)).to(
                x.device
            ),
        )
        for kind in kinds:
            _fit_fold(kind, fold_data, specs, own, config, out[kind], f)
    return out


@dataclass
class _FoldData:
    """One outer fold: its basis, which basis rows are inner (the rest validate), the labels."""

    bases: dict[str, Basis]  # per kind: float64 for ridge, float32 for logistic
    inner: torch.Tensor  # [rows] bool
    y_out: torch.Tensor  # [rows, probes] training labels (permutations shuffled)
    own_labels: torch.Tensor  # [rows, own probes] labels of targets and controls


def _fit_fold(
    kind: str,
    data: _FoldData,
    specs: list[ProbeSpec],
    own: list[int],
    config: ProbeConfig,
    models: LinearModels,
    f: int,
) -> None:
    """Choose the regularisation of every probe of fold ``f``, refit, store in ``models``.

    The C search solves to 100 x ``logistic_tol`` (a choice by validation accuracy needs no
    more); the refit, warm-started from the search, to ``logistic_tol``.
    """
    ks = [s.n_classes for s in specs]
    own_k = [ks[j] for j in own]
    grid = torch.tensor(config.ridge_alphas if kind == "ridge" else config.logistic_cs, dtype=F64)
    idx = torch.zeros(len(own), dtype=torch.int64)
    init = None
    inner, y, basis = data.inner, data.own_labels, data.bases[kind]
    if len(grid) > 1 and kind == "ridge":
        idx = ridge_alpha_index(basis, inner, y[inner], y[~inner], own_k, grid)
    elif len(grid) > 1:
        idx, starts = _logistic_c_index(
            basis,
            inner,
            y[inner],
            y[~inner],
            own_k,
            grid,
            config.logistic_max_iter,
            100 * config.logistic_tol,
        )
        init = _warm_start(basis, ks, own, starts)
    reg = _per_probe_reg(specs, own, grid[idx])
    models.reg[:, f] = reg
    if kind == "ridge":
        models.W[f], models.b[f] = ridge_fit(basis, data.y_out, ks, reg)
        return
    fit, models.W[f], models.b[f] = logistic_fit(
        basis, data.y_out, ks, reg, config.logistic_max_iter, config.logistic_tol, init
    )
    models.iterations[:, f] = fit.iterations


def _warm_start(
    basis: Basis, ks: list[int], own: list[int], starts: list[torch.Tensor]
) -> torch.Tensor:
    """Return initial parameters [r + 1, cols]: the inner solutions of own probes, nan elsewhere."""
    init = torch.full((basis.P.shape[1] + 1, sum(ks)), float("nan"), dtype=F64)
    offsets = [0, *torch.cumsum(torch.tensor(ks), 0).tolist()]
    for j, theta in zip(own, starts, strict=True):
        if bool((theta[-1] == ABSENT_LOGIT).any()):
            continue  # a class the inner rows lacked: start that probe from its ridge step
        init[:, offsets[j] : offsets[j + 1]] = theta
    return init


def _empty(k_folds: int, d: int, ks: list[int]) -> LinearModels:
    q, cols = len(ks), sum(ks)
    return LinearModels(
        W=torch.zeros(k_folds, d, cols, dtype=F64),
        b=torch.zeros(k_folds, cols, dtype=F64),
        reg=torch.full((q, k_folds), float("nan"), dtype=F64),
        iterations=torch.zeros(q, k_folds, dtype=torch.int64),
    )


def _per_probe_reg(specs: list[ProbeSpec], own: list[int], chosen: torch.Tensor) -> torch.Tensor:
    """Return the regularisation [probes]: own choices, and each permutation probe its base's."""
    reg = torch.empty(len(specs), dtype=F64)
    reg[torch.tensor(own)] = chosen
    for j, s in enumerate(specs):
        if s.role == PERM:
            reg[j] = reg[s.base]
    return reg
