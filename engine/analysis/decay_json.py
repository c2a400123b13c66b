"""The JSON form of a DecayResult: every number with its interval, nan written as null."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from priorscope.engine.analysis.decay_result import DecayResult, GroupResult

# Metrics with one value per condition (the store's condition axis).
PER_CONDITION = ("accuracy", "invariance", "became_correct", "extraction_failure")
# Scalars in the order tables show them.
SCALARS = (
    "normalised_auc",
    "strict_invariance",
    "blind_answerable",
    "blind_answerable_adjusted",
    "chance",
    "majority_rate",
    "visual_gain",
    "multimodal_gain",
    "leakage",
    "accuracy_all",
    "accuracy_not_blind",
    "inflation",
    "became_correct_any_blur",
)


def finite_or_none(x: float) -> float | None:
    """Return ``x`` as a plain float, or None when it is nan or infinite (for JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _estimate(value: Any, low: Any, high: Any) -> dict[str, float | None]:
    """Return {value, low, high} with nan as None."""
    return {
        "value": finite_or_none(value),
        "low": finite_or_none(low),
        "high": finite_or_none(high),
    }


def group_to_json(group: GroupResult, names: tuple[str, ...], ladder: tuple[str, ...]) -> dict:
    """Return one group's metrics: scalars, per-condition dicts and the flip distribution."""
    metrics: dict[str, Any] = {}
    for name in SCALARS:
        if name in group.values:
            metrics[name] = _estimate(group.values[name], group.low[name], group.high[name])
    for name in PER_CONDITION:
        v, lo, hi = group.values[name], group.low[name], group.high[name]
        metrics[name] = {c: _estimate(v[i], lo[i], hi[i]) for i, c in enumerate(names)}
    v, lo, hi = (
        group.values["flip_distribution"],
        group.low["flip_distribution"],
        group.high["flip_distribution"],
    )
    labels = ("never", *ladder[1:])
    metrics["flip_distribution"] = {c: _estimate(v[i], lo[i], hi[i]) for i, c in enumerate(labels)}
    return {
        "benchmark": group.benchmark,
        "category": group.category,
        "n": group.n,
        "metrics": metrics,
    }


def _plain(value: Any) -> Any:
    """Return a numpy scalar as the matching Python value."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def decay_to_json(result: DecayResult) -> dict[str, Any]:
    """Return the whole DecayResult as JSON-ready dicts and lists."""
    lv = result.levels
    names, ladder = lv.names, lv.ladder_names
    columns = list(result.examples)
    n = len(result.examples.get("id", ()))
    examples = [{c: _plain(result.examples[c][i]) for c in columns} for i in range(n)]
    return {
        "store": result.store,
        "config": result.config.to_json(),
        "conditions": list(names),
        "ladder": list(ladder),
        "severe": None if lv.severe is None else names[lv.severe],
        "total": None if lv.total is None else names[lv.total],
        "none": None if lv.none is None else names[lv.none],
        "n_uncommitted": result.n_uncommitted,
        "groups": [group_to_json(g, names, ladder) for g in result.groups],
        "examples": examples,
    }
