"""The probes one task trains and how their held-out predictions become cell metrics.

A task (one layer, one training condition) trains, per site and kind, one probe per target, per
control task and per permutation of each target's training labels. Every probe is trained on
the training folds and scored on the held-out fold, for every test condition; the held-out
predictions of all folds are pooled into one accuracy per cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from priorscope.engine.probes.controls import majority_class, permuted

TARGET, CONTROL, PERM = "target", "control", "perm"


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: trained on labels of target ``train_on``, scored on labels of ``score_on``.

    ``base`` is the probe whose chosen regularisation a permutation probe reuses (its target's),
    -1 for targets and controls, which choose their own.
    """

    name: str
    role: str
    train_on: int
    score_on: int
    n_classes: int
    base: int = -1
    perm: int = -1


def probe_specs(
    names: list[str], n_classes: list[int], controls: dict[int, int], permutations: int
) -> list[ProbeSpec]:
    """Return the probes of a task: targets, their control tasks, then permutation probes.

    ``names`` / ``n_classes`` describe every label set (targets and control tasks) by index;
    ``controls`` maps a target's index to its control task's index.
    """
    specs = [
        ProbeSpec(names[t], TARGET, t, t, n_classes[t])
        for t in range(len(names))
        if t not in controls.values()
    ]
    bases = {s.train_on: i for i, s in enumerate(specs)}
    for c in controls.values():
        specs.append(ProbeSpec(names[c], CONTROL, c, c, n_classes[c]))
    for t, i in bases.items():
        for p in range(permutations if t in controls else 0):
            specs.append(ProbeSpec(f"{names[t]}~perm{p}", PERM, t, t, n_classes[t], i, p))
    return specs


def fold_labels(
    specs: list[ProbeSpec], labels: np.ndarray, rows: np.ndarray, seed: int, fold: int
) -> np.ndarray:
    """Return the training labels [len(rows), probes] of every probe on training ``rows``.

    ``labels`` [n, label sets] are the training condition's labels; permutation probes get their
    target's labels shuffled among the training rows, seeded by probe, fold and permutation.
    """
    out = np.empty((rows.size, len(specs)), dtype=np.int64)
    for j, s in enumerate(specs):
        y = labels[rows, s.train_on]
        out[:, j] = permuted(y, seed, s.name, fold) if s.role == PERM else y
    return out


# A predictor returns class scores [m, sum of classes] (probe-major columns) for rows x [m, d]
# of held-out fold f; log-probabilities when ``probabilistic``.
Predict = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class Heldout:
    """Pooled held-out results [probes] of one kind on one test condition."""

    correct: np.ndarray
    n: np.ndarray
    logloss: np.ndarray  # sum of -log p(true class); nan for non-probabilistic kinds
    majority_correct: np.ndarray


def evaluate(
    specs: list[ProbeSpec],
    predict: Predict,
    probabilistic: bool,
    x: torch.Tensor,
    fold: np.ndarray,
    test_labels: np.ndarray,
    train_labels: np.ndarray,
    k: int,
) -> Heldout:
    """Return held-out counts of every probe on test rows ``x`` [n, d] (nan rows skipped).

    Rows of fold f are scored by the probes trained without fold f; ``test_labels`` [n, sets]
    are the test condition's labels, ``train_labels`` the training condition's (for the
    majority baseline of each fold).
    """
    q = len(specs)
    out = Heldout(np.zeros(q), np.zeros(q), np.zeros(q), np.zeros(q))
    present = ~torch.isnan(x).any(1).cpu().numpy()
    sizes = [s.n_classes for s in specs]
    for f in range(k):
        rows = np.flatnonzero((fold == f) & present)
        train_rows = np.flatnonzero((fold != f) & present)
        if rows.size == 0:
            continue
        scores = predict(x[torch.from_numpy(rows)], f)
        blocks = torch.split(scores, sizes, dim=1)
        for j, (s, block) in enumerate(zip(specs, blocks, strict=True)):
            y = test_labels[rows, s.score_on]
            ok = y >= 0
            if not ok.any():
                continue
            pred = block.argmax(1).cpu().numpy()
            out.correct[j] += float((pred[ok] == y[ok]).sum())
            out.n[j] += float(ok.sum())
            if probabilistic:
                logp = torch.log_softmax(block, 1).cpu().numpy()
                out.logloss[j] -= float(logp[np.flatnonzero(ok), y[ok]].sum())
            top = majority_class(train_labels[train_rows, s.score_on], s.n_classes)
            out.majority_correct[j] += float((y[ok] == top).sum())
    if not probabilistic:
        out.logloss[:] = np.nan
    return out
