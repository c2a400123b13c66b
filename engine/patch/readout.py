"""What a replaced layer leaves decodable downstream: linear read-outs of patched states.

Answer flips show where a layer's state *causes* the answer. Suppression is the other case: a
visual signal that is retrieved and then removed leaves the answer unchanged whichever run's
states it is given, so flips never point at it. Here each exact cell keeps the patched run's
answer-position states at chosen layers (``PatchConfig(keep="all")``), and a cross-validated
linear probe asks how well an example column (the drawn colour, the gold answer) can be read
from them. Injecting the clean run's answer-position state at layer L into the run without the
image (``source="clean", target="total"``, group ``last``, mode ``state``) and reading the
kept layers above L shows where the injected signal is removed: the layer at which the
read-out falls is where suppression happens, found without the image's help.

The probe is the probe engine's ridge classifier (standardised on the training fold, one
eigenbasis per fold, the ridge strength chosen on an inner fold), scored on held-out folds
grouped like ``priorscope probe`` (an image's questions stay in one fold).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from priorscope.engine.errors import StoreError, UsageError

if TYPE_CHECKING:
    from priorscope.engine.patch.config import PatchConfig
    from priorscope.engine.patch.run import PatchResult
    from priorscope.engine.store import Store

ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@dataclass
class Readout:
    """Held-out accuracy of reading ``target`` from kept states, per patch cell and unpatched.

    ``accuracy`` [direction, layer, group, mode, kept_layer] (NaN where the cell did not run);
    ``unpatched`` condition -> accuracy [kept_layer] from the store's answer-position states of
    that run (the same rows and folds; NaN where the store lacks the layer); ``majority`` the
    largest class share of the labelled rows (what a read-out of nothing scores).
    """

    target: str
    classes: tuple[str, ...]
    directions: tuple[str, ...]
    layers: tuple[int, ...]
    groups: tuple[str, ...]
    modes: tuple[str, ...]
    kept_layers: tuple[int, ...]
    accuracy: np.ndarray
    unpatched: dict[str, np.ndarray]
    majority: float
    n: int
    folds: int
    group_by: str

    def cell(self, direction: str, group: str, mode: str) -> np.ndarray:
        """Return the read-out accuracy [patched layer, kept layer] of one cell kind."""
        try:
            di = self.directions.index(direction)
            gi, mi = self.groups.index(group), self.modes.index(mode)
        except ValueError as exc:
            raise UsageError(
                f"Expected a direction in {list(self.directions)}, a group in "
                f"{list(self.groups)} and a mode in {list(self.modes)}. Got {direction!r}, "
                f"{group!r}, {mode!r}."
            ) from exc
        return self.accuracy[di, :, gi, mi]

    def curve(self, direction: str, group: str, mode: str, layer: int) -> dict[int, float]:
        """Return kept layer -> read-out after patching ``layer`` (kept layers from it up)."""
        if layer not in self.layers:
            raise UsageError(f"Expected a patched layer in {list(self.layers)}. Got {layer}.")
        acc = self.cell(direction, group, mode)[self.layers.index(layer)]
        return {v: float(a) for v, a in zip(self.kept_layers, acc, strict=True) if v >= layer}

    def loss_layer(self, direction: str, group: str, mode: str, layer: int) -> int | None:
        """Return the kept layer where the read-out after patching ``layer`` falls the most.

        That is the layer whose computation removes the patched-in signal (None with fewer than
        two kept layers from ``layer`` up).
        """
        curve = self.curve(direction, group, mode, layer)
        keys = sorted(curve)
        if len(keys) < 2:
            return None
        drops = {b: curve[a] - curve[b] for a, b in itertools.pairwise(keys)}
        return max(drops, key=lambda v: drops[v])

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "classes": list(self.classes),
            "layers": list(self.layers),
            "kept_layers": list(self.kept_layers),
            "unpatched": {k: [round(float(a), 4) for a in v] for k, v in self.unpatched.items()},
            "majority": round(self.majority, 4),
            "n": self.n,
            "folds": self.folds,
            "group_by": self.group_by,
            "cells": {
                f"{d} {g} {m}": np.round(self.cell(d, g, m), 4).tolist()
                for d in self.directions
                for g in self.groups
                for m in self.modes
            },
        }


def localise_config(**fields: Any) -> PatchConfig:
    """Return the patch that places a suppression (see the module): the clean run's answer-
    position state put into the run without the image at every layer, every layer kept.

    ``fields`` override or add PatchConfig fields (``out``, ``model``, ``examples``, ...).
    """
    from priorscope.engine.patch.config import PatchConfig

    base: dict[str, Any] = {
        "source": "clean",
        "target": "total",
        "both_directions": False,
        "groups": ("last",),
        "modes": ("state",),
        "keep": "all",
    }
    return PatchConfig(**{**base, **fields})


def readout(
    store: Store,
    result: PatchResult,
    target: str = "gold",
    *,
    folds: int = 5,
    seed: int = 0,
    group_by: str = "auto",
    min_class: int = 2,
) -> Readout:
    """Return the read-out of ``target`` from the kept states of ``result`` (see the module).

    ``target`` is a probe target name (``gold``, ``answer``, ``prior``, ``correct``) or an example
    column (``template``, a metadata key). Classes with fewer than ``min_class`` labelled rows
    are dropped. ``result`` must come from ``patch`` with ``keep`` on this ``store``.
    """
    from priorscope.engine.probes.run import store_split
    from priorscope.engine.probes.targets import PER_CONDITION, TargetInputs, encode, raw_values

    kept = result.exact.get("kept")
    if kept is None:
        raise UsageError(
            "Expected patch results with kept states for a read-out. Got none: run patch with "
            "keep='final' or 'all' (CLI: --keep all)."
        )
    if folds < 2:
        raise UsageError(f"Expected --folds of at least 2 for a held-out read-out. Got {folds}.")
    visible = store.rows()
    at = np.searchsorted(visible, result.rows)
    if (
        len(result.rows) == 0
        or len(visible) == 0
        or not np.array_equal(visible[np.minimum(at, len(visible) - 1)], result.rows)
    ):
        raise StoreError(
            f"Expected the patch results' examples among the committed rows of {store.path}. Got "
            "rows the store does not have: pass the store the patch ran on."
        )
    table = store.examples().take(at)
    conds = tuple(store.condition_names)
    inputs = TargetInputs(
        conditions=conds,
        answer=store.outputs("answer")[at],
        score=store.outputs("score")[at],
        column=table.column,
        gold=table.gold,
    )
    values = raw_values(target, inputs)
    encoded = encode(
        target, values, list(range(len(conds))), min_class, "drop", target in PER_CONDITION
    )
    if not encoded.usable:
        raise UsageError(
            f"Expected a target with at least two classes to read out. Got: {encoded.note}."
        )
    split = store_split(store, table, folds, seed, group_by)
    directions = tuple(f"{s}->{t}" for s, t in result.directions)
    acc = np.full(kept.shape[:1] + kept.shape[2:6], np.nan, np.float64)
    for di, (_, tgt) in enumerate(result.directions):
        y = encoded.labels[:, conds.index(tgt)]
        for cell in np.ndindex(*kept.shape[2:6]):
            li, gi, mi, ki = cell
            acc[(di, *cell)] = held_out_accuracy(
                kept[di, :, li, gi, mi, ki], y, split.fold, encoded.n_classes
            )
    unpatched = {
        cond: np.asarray(
            [
                _unpatched(store, at, cond, v, encoded.labels[:, ci], split.fold, encoded.n_classes)
                for v in result.kept_layers
            ]
        )
        for ci, cond in enumerate(conds)
    }
    labelled = encoded.labels[encoded.labels >= 0]
    majority = float(np.bincount(labelled).max() / len(labelled)) if len(labelled) else float("nan")
    return Readout(
        target=target,
        classes=encoded.classes,
        directions=directions,
        layers=tuple(result.layers),
        groups=tuple(result.groups),
        modes=tuple(result.modes),
        kept_layers=tuple(result.kept_layers),
        accuracy=acc,
        unpatched=unpatched,
        majority=majority,
        n=int((encoded.labels >= 0).any(axis=1).sum()),
        folds=folds,
        group_by=split.group_by,
    )


def _unpatched(
    store: Store,
    at: np.ndarray,
    condition: str,
    layer: int,
    labels: np.ndarray,
    fold: np.ndarray,
    n_classes: int,
) -> float:
    """Return the read-out accuracy of ``condition``'s stored answer-position states at
    ``layer`` (NaN where the store lacks that layer or the ``last`` reduction)."""
    if layer not in store.layers or "last" not in store.reductions:
        return float("nan")
    x = store.hidden(layer=layer, condition=condition, reduction="last")[at]
    return held_out_accuracy(x, labels, fold, n_classes)


def held_out_accuracy(x: np.ndarray, y: np.ndarray, fold: np.ndarray, n_classes: int) -> float:
    """Return the k-fold held-out accuracy of ridge classifiers of ``y`` from rows ``x`` [n, d].

    Rows with ``y < 0`` or non-finite features are left out (NaN when none is left). Per outer
    fold f the ridge strength is the one of :data:`ALPHAS` scoring best on fold f + 1 (the
    largest on ties), fitted on the other training folds; the chosen one is refitted on every
    training fold and scored on fold f.
    """
    import torch

    from priorscope.engine.probes.linear import F64, make_basis, ridge_alpha_index, ridge_fit

    keep = (y >= 0) & np.isfinite(x).all(axis=1)
    if not keep.any():
        return float("nan")
    x, y, fold = x[keep], y[keep], fold[keep]
    k = int(fold.max()) + 1
    alphas = torch.tensor(ALPHAS, dtype=F64)
    correct = total = 0
    for f in range(k):
        test, train = fold == f, fold != f
        if not test.any() or len(np.unique(y[train])) < 2:
            continue
        # The probe engine's ridge path: one basis per fold, the strength chosen on fold f + 1.
        basis = make_basis(torch.from_numpy(np.ascontiguousarray(x[train])))
        labels = torch.from_numpy(y[train]).long()[:, None]  # [rows, 1 probe]
        inner = torch.from_numpy(fold[train] != (f + 1) % k)
        choice = torch.tensor([len(ALPHAS) - 1])
        if bool(inner.any()) and not bool(inner.all()):
            choice = ridge_alpha_index(
                basis, inner, labels[inner], labels[~inner], [n_classes], alphas
            )
        w, b = ridge_fit(basis, labels, [n_classes], alphas[choice])
        predicted = (torch.from_numpy(x[test]).to(F64) @ w + b).argmax(1).numpy()
        correct += int((predicted == y[test]).sum())
        total += int(test.sum())
    return correct / total if total else float("nan")


__all__ = ["ALPHAS", "Readout", "held_out_accuracy", "localise_config", "readout"]
