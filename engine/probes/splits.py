"""Grouped, seeded k-fold splits shared by every cell of a probe run.

A fold holds whole examples, so every condition of an example is on the same side of a split;
and whole images: examples that share an image (a benchmark may ask several questions about
one) share a fold, grouped by an image hash column of the example metadata when the store has
one (:data:`IMAGE_COLUMNS`), else each example is its own group. The assignment depends only on
the groups and the seed, so every cell of a run (and a resumed run) uses the same split.

Inside training fold set ``f`` the next fold, ``(f + 1) % k``, is the inner validation fold that
chooses regularisation and stops MLP training early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from priorscope.engine.errors import UsageError
from priorscope.engine.probes.config import IMAGE_COLUMNS
from priorscope.engine.probes.controls import stable_seed


@dataclass(frozen=True)
class Split:
    """Fold of every analysed example: ``fold`` [example] int8 in 0..k-1, by ``group_by``."""

    fold: np.ndarray
    k: int
    group_by: str
    n_groups: int

    def inner(self, f: int) -> int:
        """Return the inner validation fold of outer fold ``f``."""
        return (f + 1) % self.k

    def summary(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "group_by": self.group_by,
            "n_groups": self.n_groups,
            "fold_sizes": np.bincount(self.fold, minlength=self.k).tolist(),
        }


def group_keys(
    ids: tuple[str, ...], metadata_keys: list[str], column: Any, how: str
) -> tuple[np.ndarray, str]:
    """Return (group key per example, the column used): ``how`` is 'auto', 'id' or a column."""
    if how == "auto":
        how = next((c for c in IMAGE_COLUMNS if c in metadata_keys), "id")
    if how == "id":
        return np.array(ids, dtype=object), "id"
    values = column(how)  # unknown names raise with a did-you-mean
    # An example without a hash value is its own group, never lumped with other blanks.
    keys = [f"id:{i}" if v in (None, "") else f"v:{v}" for i, v in zip(ids, values, strict=True)]
    return np.array(keys, dtype=object), how


def assign_folds(keys: np.ndarray, k: int, seed: int, group_by: str = "id") -> Split:
    """Return a Split putting every group in one fold, folds as equal in size as groups allow.

    Groups are shuffled with ``seed``, then placed largest first (stable order) in the fold with
    fewest examples so far, the lowest fold index on ties.
    """
    uniq, inverse, sizes = np.unique(keys.astype(str), return_inverse=True, return_counts=True)
    if len(uniq) < k:
        raise UsageError(
            f"Expected at least {k} groups of examples for {k}-fold splits. Got {len(uniq)} "
            f"(grouped by {group_by!r}). Use fewer --folds or a store with more examples."
        )
    rng = np.random.default_rng(stable_seed(seed, "folds"))
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fill = np.zeros(k, dtype=np.int64)
    group_fold = np.empty(len(uniq), dtype=np.int8)
    for g in order:
        f = int(np.argmin(fill))
        group_fold[g] = f
        fill[f] += sizes[g]
    return Split(group_fold[inverse].astype(np.int8), k, group_by, len(uniq))
