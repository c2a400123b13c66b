"""One task of a probe run: every probe of one layer and one training condition.

The task fits every kind and reduction on its training condition's hidden states, scores each
probe on every test condition, turns pooled held-out predictions into cell metrics, and writes
whole chunks of the results store followed by its ``done`` flag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from priorscope.engine.errors import StoreError
from priorscope.engine.probes.cells import CONTROL, PERM, TARGET, Heldout, evaluate
from priorscope.engine.probes.controls import permutation_p, wilson
from priorscope.engine.probes.linear import fit_linear_group
from priorscope.engine.probes.mlp import fit_mlp_group
from priorscope.engine.probes.results import ARRAYS, PROBES_GROUP
from priorscope.engine.store import Store, open_results, open_store

if TYPE_CHECKING:
    from priorscope.engine.probes.run import Plan

LINEAR_KINDS = ("ridge", "logistic")


@contextlib.contextmanager
def _pinned(backend: str) -> Iterator[torch.device]:
    """Pin torch to one thread (results must not depend on thread counts); pick the device."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if backend in ("cuda", "cuml"):
            device = torch.device("cuda")
            with device:
                yield device
        else:
            yield torch.device("cpu")
    finally:
        torch.set_num_threads(threads)


def read_condition(store: Store, layer: int, condition: str, rows: np.ndarray) -> np.ndarray:
    """Return hidden states [len(rows), reduction, d_model] float32 of ``rows``, shard by shard."""
    out: np.ndarray | None = None
    seen = np.zeros(rows.size, dtype=bool)
    for chunk_rows, values in store.iter_hidden_chunks(layer, condition):
        pos = np.searchsorted(rows, chunk_rows)
        pos = np.minimum(pos, rows.size - 1)
        keep = rows[pos] == chunk_rows  # rows committed after the plan was made are ignored
        if out is None:
            out = np.full((rows.size, *values.shape[1:]), np.nan, dtype=np.float32)
        out[pos[keep]] = values[keep]
        seen[pos[keep]] = True
    if out is None or not seen.all():
        raise StoreError(
            f"Expected hidden states of all {rows.size} planned examples at layer {layer}, "
            f"condition {condition!r} of {store.path!r}. Got {int(seen.sum())}. The store changed "
            "under the run; start it again."
        )
    return out


def run_task(plan: Plan, li: int, ti: int) -> dict[str, Any]:
    """Fit, score and write every cell of (layer index ``li``, training condition ``ti``)."""
    with _pinned(plan.resolved.backend) as device:
        store = open_store(plan.store_path)
        layer, train = plan.resolved.layers[li], plan.resolved.train[ti]
        x_all = read_condition(store, layer, train, plan.rows)
        labels_train = plan.labels[:, plan.conditions.index(train)]
        buf = TaskBuffers(plan)
        sites = [
            (ri, plan.store_reductions.index(red)) for ri, red in enumerate(plan.resolved.sites)
        ]
        fitted = []
        for ri, r in sites:
            x = torch.from_numpy(np.ascontiguousarray(x_all[:, r])).to(device)
            fits = fit_site(x, plan, labels_train) if plan.specs else {}
            fitted.append(fits)
            if train in plan.resolved.test:
                _score(plan, buf, fits, plan.resolved.test.index(train), ri, x, labels_train)
            buf.train_counts(ri, x, labels_train)
            buf.fits(ri, fits)
        del x_all
        # Every other test condition is read once (one slab) and scores every site's probes.
        for te, test in enumerate(plan.resolved.test):
            if test == train:
                continue
            xt_all = read_condition(store, layer, test, plan.rows)
            for (ri, r), fits in zip(sites, fitted, strict=True):
                xt = torch.from_numpy(np.ascontiguousarray(xt_all[:, r])).to(device)
                _score(plan, buf, fits, te, ri, xt, labels_train)
            del xt_all
        buf.write(ti, li)
    return {"layer": layer, "train": train}


def _score(
    plan: Plan,
    buf: TaskBuffers,
    fits: dict[str, Any],
    te: int,
    ri: int,
    xt: torch.Tensor,
    labels_train: np.ndarray,
) -> None:
    """Score every kind's probes of site ``ri`` on test condition ``te``'s rows ``xt``."""
    labels_test = plan.labels[:, plan.conditions.index(plan.resolved.test[te])]
    for kind, models in fits.items():
        held = evaluate(
            plan.specs,
            models.predict,
            kind != "ridge",
            xt,
            plan.fold,
            labels_test,
            labels_train,
            plan.k,
        )
        buf.cells(kind, te, ri, held)


def fit_site(x: torch.Tensor, plan: Plan, labels: np.ndarray) -> dict[str, Any]:
    """Return {kind: fitted models} of one reduction's training rows ``x`` [n, d]."""
    cfg = plan.config
    linear = tuple(k for k in cfg.kinds if k in LINEAR_KINDS)
    out: dict[str, Any] = {}
    if plan.resolved.backend == "cuml" and "logistic" in linear:
        from priorscope.engine.probes.gpu import fit_logistic_cuml  # only on the cuml path

        out["logistic"] = fit_logistic_cuml(x, plan.fold, plan.k, labels, plan.specs, cfg)
        linear = tuple(k for k in linear if k != "logistic")
    if linear:
        out.update(fit_linear_group(x, plan.fold, plan.k, labels, plan.specs, cfg, linear))
    if "mlp" in cfg.kinds:
        out["mlp"] = fit_mlp_group(x, plan.fold, plan.k, labels, plan.specs, cfg)
    return {k: out[k] for k in cfg.kinds}


class TaskBuffers:
    """The results of one task, shaped as the (train, layer) slice of every results array."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        shape = plan.shape()
        self.arrays: dict[str, np.ndarray] = {}
        for name, (dims, dtype, _) in ARRAYS.items():
            if name == "done":
                continue
            sizes = tuple(shape[d] for d in dims if d not in ("train", "layer"))
            fill: Any = 0 if dtype == "int64" else np.nan
            self.arrays[name] = np.full(sizes, fill, dtype=dtype)
        specs = plan.specs
        self.probe = {s.train_on: j for j, s in enumerate(specs) if s.role == TARGET}
        self.control = {
            t: j
            for t, jt in self.probe.items()
            for j, c in enumerate(specs)
            if c.role == CONTROL and c.name == f"{specs[jt].name}~control"
        }
        self.perms = {
            t: [j for j, s in enumerate(specs) if s.role == PERM and s.base == jt]
            for t, jt in self.probe.items()
        }

    def _targets(self) -> Iterator[tuple[int, int]]:
        """Yield (requested target index, label set) of every usable target."""
        for i, s in enumerate(self.plan.target_set):
            if s >= 0:
                yield i, s

    def cells(self, kind: str, te: int, ri: int, held: Heldout) -> None:
        """Fill the cell metrics of ``kind`` on test condition ``te``, reduction ``ri``."""
        ki = self.plan.config.kinds.index(kind)
        a = self.arrays
        with np.errstate(invalid="ignore", divide="ignore"):
            for i, s in self._targets():
                j = self.probe[s]
                n = held.n[j]
                acc = held.correct[j] / n if n else np.nan
                at = (i, ki, te, ri)
                a["accuracy"][at] = acc
                a["ci_low"][at], a["ci_high"][at] = wilson(held.correct[j], n)
                a["log_loss"][at] = held.logloss[j] / n if n else np.nan
                a["n_test"][at] = int(n)
                a["chance"][at] = 1.0 / self.plan.specs[j].n_classes
                a["majority"][at] = held.majority_correct[j] / n if n else np.nan
                if s in self.control:
                    c = self.control[s]
                    ctrl = held.correct[c] / held.n[c] if held.n[c] else np.nan
                    a["control_accuracy"][at] = ctrl
                    a["selectivity"][at] = acc - ctrl
                perms = self.perms.get(s, [])
                if perms:
                    null = np.array(
                        [held.correct[p] / held.n[p] if held.n[p] else np.nan for p in perms]
                    )
                    a["perm_accuracy"][(*at, slice(0, len(perms)))] = null
                    a["perm_mean"][at] = float(np.nanmean(null))
                    a["perm_p"][at] = permutation_p(acc, null)

    def train_counts(self, ri: int, x: torch.Tensor, labels: np.ndarray) -> None:
        """Fill n_train: labelled training rows per fold, averaged over folds."""
        present = ~torch.isnan(x).any(1).cpu().numpy()
        for i, s in self._targets():
            labelled = present & (labels[:, s] >= 0)
            per_fold = [int((labelled & (self.plan.fold != f)).sum()) for f in range(self.plan.k)]
            self.arrays["n_train"][i, :, :, ri] = float(np.mean(per_fold))

    def fits(self, ri: int, fits: dict[str, Any]) -> None:
        """Fill the chosen regularisation, iterations and the linear weights of reduction ``ri``."""
        a, kinds = self.arrays, self.plan.config.kinds
        offsets = np.concatenate([[0], np.cumsum([s.n_classes for s in self.plan.specs])])
        for kind, models in fits.items():
            ki = kinds.index(kind)
            reg, iters = models.reg.cpu().numpy(), models.iterations.cpu().numpy()
            hidden = models.hidden.cpu().numpy() if kind == "mlp" else None
            mean_w = models.W.mean(0).cpu().numpy() if kind in LINEAR_KINDS else None
            mean_b = models.b.mean(0).cpu().numpy() if kind in LINEAR_KINDS else None
            for i, s in self._targets():
                j = self.probe[s]
                a["reg"][i, ki, ri] = reg[j]
                a["iterations"][i, ki, ri] = iters[j]
                if hidden is not None:
                    a["hidden"][i, ki, ri] = hidden[j]
                if mean_w is not None and mean_b is not None:
                    lk, k = LINEAR_KINDS.index(kind), self.plan.specs[j].n_classes
                    cols = slice(offsets[j], offsets[j] + k)
                    a["weights"][i, lk, ri, :k] = mean_w[:, cols].T
                    a["intercept"][i, lk, ri, :k] = mean_b[cols]

    def write(self, ti: int, li: int) -> None:
        """Write every array's (train, layer) chunk, then the done flag (last: resume safety)."""
        rs = open_results(self.plan.out, PROBES_GROUP, mode="a")
        for name, values in self.arrays.items():
            dims = ARRAYS[name][0]
            index = tuple(ti if d == "train" else li if d == "layer" else slice(None) for d in dims)
            rs.write(name, index, values)
        rs.write("done", (ti, li), True)
