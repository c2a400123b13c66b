"""What a probe predicts: class labels per (example, condition) for every target.

Built-in targets: ``gold`` (the first gold answer), ``answer`` (the model's own extracted
answer under each condition), ``prior`` (the model's answer under total obfuscation, else with
no image: what it says without visual evidence), ``correct`` (whether its answer under each
condition scored at least 0.5). Any other name is an example column (a table field such as
``category`` or a metadata key such as ``template`` or ``canonical``, the synthetic set's
planted prior answer).

Labels are integer class indices, -1 where an example has no label (no answer extracted, an
empty column, a class that was dropped). The class set of a target is shared by every cell, so
a probe trained on one condition is scored on another with the same classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from priorscope.engine.errors import UsageError

OTHER = "(other)"
PER_CONDITION = ("answer", "correct")


@dataclass(frozen=True)
class Target:
    """Labels of one target: ``labels`` [example, condition] int32 (-1 = none), ``classes``.

    ``pooled`` classes were merged into :data:`OTHER` for being rare, ``dropped`` ones removed
    (their rows count as unlabelled); ``note`` explains why a target cannot be probed, if so.
    """

    name: str
    labels: np.ndarray
    classes: tuple[str, ...]
    pooled: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    per_condition: bool = False
    note: str = ""
    control_of: str | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def usable(self) -> bool:
        return not self.note

    def summary(self) -> dict[str, Any]:
        """Return what the results store records about this target."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "pooled": list(self.pooled),
            "dropped": list(self.dropped),
            "per_condition": self.per_condition,
            "unlabelled": int((self.labels < 0).sum()),
            "note": self.note,
            "control_of": self.control_of,
        }


@dataclass(frozen=True)
class TargetInputs:
    """What targets are built from: the example table's columns and the model's outputs."""

    conditions: tuple[str, ...]
    answer: np.ndarray  # [example, condition] str ('' = no answer extracted)
    score: np.ndarray  # [example, condition] float (nan = not scored)
    column: Any  # callable name -> np.ndarray[object] [example] (ExampleTable.column)
    gold: tuple[tuple[str, ...], ...] = field(default=())


def raw_values(name: str, inputs: TargetInputs) -> np.ndarray:
    """Return the string labels [example, condition] of target ``name`` ('' = unlabelled)."""
    c = inputs.answer.shape[1]
    if name == "gold":
        first = np.array([g[0] if g else "" for g in inputs.gold], dtype=object)
        return np.repeat(first[:, None], c, axis=1)
    if name == "answer":
        return np.asarray(inputs.answer, dtype=object).copy()
    if name == "correct":
        score = np.asarray(inputs.score, dtype=np.float64)
        out = np.where(score >= 0.5, "1", "0").astype(object)
        out[~np.isfinite(score)] = ""
        return out
    if name == "prior":
        for cond in ("total", "none"):
            if cond in inputs.conditions:
                col = np.asarray(inputs.answer[:, inputs.conditions.index(cond)], dtype=object)
                return np.repeat(col[:, None], c, axis=1)
        raise UsageError(
            "Expected a 'total' (or 'none') condition in the store for target 'prior' (the "
            f"model's answer without visual evidence). Got conditions {list(inputs.conditions)}. "
            "Capture with total obfuscation, or probe another target."
        )
    values = inputs.column(name)  # unknown names raise with a did-you-mean
    col = np.array(["" if v is None else str(v) for v in values], dtype=object)
    return np.repeat(col[:, None], c, axis=1)


def _class_counts(values: np.ndarray, train_idx: list[int]) -> dict[str, int]:
    """Return, per class, its largest count over the training conditions' columns."""
    counts: dict[str, int] = {}
    for c in train_idx:
        names, n = np.unique(values[:, c][values[:, c] != ""].astype(str), return_counts=True)
        for name, k in zip(names.tolist(), n.tolist(), strict=True):
            counts[name] = max(counts.get(name, 0), int(k))
    return counts


def encode(
    name: str,
    values: np.ndarray,
    train_idx: list[int],
    min_class: int,
    rare: str,
    per_condition: bool,
) -> Target:
    """Return the Target of string labels ``values`` after pooling or dropping rare classes."""
    counts = _class_counts(values, train_idx)
    common = sorted(k for k, v in counts.items() if v >= min_class)
    rare_names = sorted(k for k, v in counts.items() if v < min_class)
    pooled: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    mapping = {k: k for k in common}
    if rare_names and rare == "pool":
        isin = np.isin(values, rare_names)
        pooled_count = max((int(isin[:, c].sum()) for c in train_idx), default=0)
        if pooled_count >= min_class and OTHER not in mapping:
            pooled = tuple(rare_names)
            mapping.update({k: OTHER for k in rare_names})
        else:
            dropped = tuple(rare_names)
    elif rare_names:
        dropped = tuple(rare_names)
    classes = tuple(sorted(set(mapping.values())))
    index = {k: classes.index(v) for k, v in mapping.items()}
    labels = np.full(values.shape, -1, dtype=np.int32)
    for key, i in index.items():
        labels[values == key] = i
    note = ""
    if len(classes) < 2:
        note = (
            f"target {name!r} has {len(classes)} class(es) with at least {min_class} examples "
            f"in a training condition (classes seen: {sorted(counts)[:10]}); nothing to probe"
        )
    return Target(name, labels, classes, pooled, dropped, per_condition, note)


def build_targets(
    names: tuple[str, ...],
    inputs: TargetInputs,
    train: tuple[str, ...],
    min_class: int,
    rare: str,
) -> list[Target]:
    """Return one Target per name, classes decided on the training conditions."""
    train_idx = [inputs.conditions.index(c) for c in train]
    out = []
    for name in names:
        values = raw_values(name, inputs)
        out.append(encode(name, values, train_idx, min_class, rare, name in PER_CONDITION))
    return out
