"""What ``compute_decay`` returns, and the ways to read it from Python.

``result.metric("blind_answerable")`` gives one number with its interval,
``result.curve("accuracy")`` one per condition, ``result.to_frame()`` a table of every group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from priorscope.engine.errors import UsageError, did_you_mean

if TYPE_CHECKING:
    from priorscope.engine.analysis.decay import DecayConfig, Levels


def ci_cell(value: float, low: float, high: float) -> str:
    """Return 'v [lo, hi]' in percent for a table cell; '—' when the value is not a number."""
    if value is None or not math.isfinite(value):
        return "—"
    lo = "?" if not math.isfinite(low) else f"{100 * low:.1f}"
    hi = "?" if not math.isfinite(high) else f"{100 * high:.1f}"
    return f"{100 * value:.1f} [{lo}, {hi}]"


class Estimate(NamedTuple):
    """One metric's value and the bounds of its bootstrap interval (nan: not computed)."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        text = ci_cell(self.value, self.low, self.high)
        value, _, interval = text.partition(" ")
        return f"{value}% {interval}".strip() if interval else value


@dataclass(frozen=True)
class GroupResult:
    """The metrics of one benchmark (``category`` None) or one category within it."""

    benchmark: str
    category: str | None
    n: int
    values: dict[str, np.ndarray]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]

    @property
    def key(self) -> str:
        return self.benchmark if self.category is None else f"{self.benchmark}/{self.category}"

    def estimate(self, name: str, index: int | None = None) -> Estimate:
        """Return metric ``name`` (element ``index`` of a per-condition one) as an Estimate."""
        if name not in self.values:
            raise did_you_mean(name, list(self.values), "decay metric")
        parts = (self.values[name], self.low[name], self.high[name])
        if index is not None:
            parts = tuple(np.asarray(p)[index] for p in parts)
        if np.ndim(parts[0]) != 0:
            raise UsageError(
                f"Expected a scalar metric. Got {name!r}, which has one value per condition. "
                "Pass condition=NAME, or use result.curve(name)."
            )
        return Estimate(*(float(p) for p in parts))


@dataclass(frozen=True)
class DecayResult:
    """Decay metrics of a store: one GroupResult per benchmark (and category), plus per example."""

    store: str
    config: DecayConfig
    levels: Levels
    groups: tuple[GroupResult, ...]
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    n_uncommitted: int = 0

    def group(self, benchmark: str | None = None, category: str | None = None) -> GroupResult:
        """Return the group of ``benchmark`` (and ``category``); None means the only benchmark."""
        if benchmark is None:
            names = sorted({g.benchmark for g in self.groups})
            if len(names) != 1:
                raise UsageError(
                    f"Expected benchmark=NAME: this result holds several. Got none. Pass one "
                    f"of: {', '.join(names)}."
                )
            benchmark = names[0]
        for g in self.groups:
            if g.benchmark == benchmark and g.category == category:
                return g
        raise UsageError(
            f"Expected a group among {[g.key for g in self.groups]}. "
            f"Got {benchmark!r}/{category!r} instead."
        )

    def metric(
        self,
        name: str,
        benchmark: str | None = None,
        category: str | None = None,
        condition: str | None = None,
    ) -> Estimate:
        """Return one metric of one group (at ``condition`` for per-condition metrics)."""
        index = None
        if condition is not None:
            if condition not in self.levels.names:
                raise did_you_mean(condition, list(self.levels.names), "condition")
            index = self.levels.names.index(condition)
        return self.group(benchmark, category).estimate(name, index)

    def curve(
        self, name: str = "accuracy", benchmark: str | None = None, category: str | None = None
    ) -> dict[str, Estimate]:
        """Return a per-condition metric of one group as {condition: Estimate}, in axis order."""
        g = self.group(benchmark, category)
        return {c: g.estimate(name, i) for i, c in enumerate(self.levels.names)}

    def to_frame(self, intervals: bool = False) -> Any:
        """Return a pandas DataFrame: one row per group, a column per metric and condition.

        Per-condition metrics become ``accuracy@clean``-style columns; ``intervals`` adds
        ``_low`` and ``_high`` columns beside every value.
        """
        import pandas as pd

        rows = []
        for g in self.groups:
            row: dict[str, Any] = {"benchmark": g.benchmark, "category": g.category, "n": g.n}
            for name, value in g.values.items():
                labels = self._labels(name, np.ndim(value))
                for i, label in enumerate(labels):
                    est = g.estimate(name, None if label == name else i)
                    row[label] = est.value
                    if intervals:
                        row[f"{label}_low"], row[f"{label}_high"] = est.low, est.high
            rows.append(row)
        return pd.DataFrame(rows)

    def _labels(self, name: str, ndim: int) -> list[str]:
        if ndim == 0:
            return [name]
        if name == "flip_distribution":
            return [f"{name}@{c}" for c in ("never", *self.levels.ladder_names[1:])]
        return [f"{name}@{c}" for c in self.levels.names]

    def to_json(self) -> dict[str, Any]:
        """Return every number as plain JSON types (nan becomes null)."""
        from priorscope.engine.analysis.decay_json import decay_to_json

        return decay_to_json(self)
