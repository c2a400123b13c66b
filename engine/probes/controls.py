"""Controls that tell a probe's accuracy apart from what any probe would get.

- The Hewitt & Liang control task (Hewitt & Liang, 2019, "Designing and Interpreting Probes with
  Control Tasks"): each item type (by default the question text) gets a fixed random label,
  drawn from the target's own class distribution. A probe that reaches high control accuracy
  reads the item type, not the property; selectivity = accuracy - control accuracy.
- A permutation null: probes trained on the training labels permuted, scored on the true test
  labels; their accuracies give the null distribution and a p-value.
- The majority rate (predict the training fold's most frequent class) and the chance rate
  (one over the number of classes).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from priorscope.engine.probes.targets import Target

Z95 = 1.959963984540054


def stable_seed(*parts: object) -> list[int]:
    """Return a seed sequence from ints and strings, identical in every process and run."""
    return [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]


def control_target(target: Target, types: np.ndarray, seed: int) -> Target:
    """Return the control task of ``target``: one random label per item type, same balance.

    ``types`` [example] are the item types (e.g. question texts). Labels are drawn from the
    target's class frequencies over its labelled (example, condition) entries, so the control
    task is exactly as hard for a probe that cannot read the type; rows without a target label
    stay unlabelled.
    """
    labels = target.labels
    counts = np.bincount(labels[labels >= 0], minlength=target.n_classes).astype(np.float64)
    freq = counts / max(counts.sum(), 1.0)
    keys = np.array(["" if t is None else str(t) for t in types], dtype=object)
    uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
    rng = np.random.default_rng(stable_seed(seed, "control", target.name))
    per_type = rng.choice(target.n_classes, size=len(uniq), p=freq).astype(np.int32)
    drawn = per_type[inverse]
    control = np.where(labels >= 0, drawn[:, None], -1).astype(np.int32)
    return dataclasses.replace(
        target,
        name=f"{target.name}~control",
        labels=control,
        control_of=target.name,
        per_condition=False,
    )


def permuted(labels: np.ndarray, seed: int, *key: object) -> np.ndarray:
    """Return ``labels`` [n] with its labelled entries shuffled among themselves."""
    out = labels.copy()
    idx = np.flatnonzero(labels >= 0)
    rng = np.random.default_rng(stable_seed(seed, "perm", *key))
    out[idx] = labels[idx][rng.permutation(idx.size)]
    return out


def wilson(correct: float, n: float) -> tuple[float, float]:
    """Return the Wilson 95% interval of a proportion ``correct / n`` (nan, nan when n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = correct / n
    denom = 1.0 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def permutation_p(accuracy: float, null: np.ndarray) -> float:
    """Return the permutation p-value (1 + #null >= accuracy) / (1 + #null); nan without null."""
    null = null[np.isfinite(null)]
    if null.size == 0 or not np.isfinite(accuracy):
        return float("nan")
    return float((1 + np.sum(null >= accuracy - 1e-12)) / (1 + null.size))


def majority_class(train_labels: np.ndarray, n_classes: int) -> int:
    """Return the most frequent training class (the lowest index on ties)."""
    counts = np.bincount(train_labels[train_labels >= 0], minlength=n_classes)
    return int(np.argmax(counts))
