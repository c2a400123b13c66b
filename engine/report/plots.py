"""Matplotlib figures of a decay result, rendered off-screen (Agg) to PNG bytes."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from priorscope.engine.analysis.decay_result import DecayResult, GroupResult


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Any, Any]:
    """Return a new (figure, axes) on the Agg canvas, independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig: Any) -> bytes:
    """Return the figure encoded as PNG."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plotted_groups(result: DecayResult) -> list[GroupResult]:
    """Return the groups drawn as lines: categories when computed, else benchmarks."""
    cats = [g for g in result.groups if g.category is not None]
    return cats or list(result.groups)


def curve_png(result: DecayResult, metric: str, ylabel: str) -> bytes:
    """Return a PNG of ``metric`` against ladder level, one line per group with its CI band."""
    lv = result.levels
    x = np.arange(len(lv.ladder))
    fig, ax = _figure()
    for g in plotted_groups(result):
        cols = list(lv.ladder)
        y = np.asarray(g.values[metric])[cols]
        lo, hi = np.asarray(g.low[metric])[cols], np.asarray(g.high[metric])[cols]
        (line,) = ax.plot(x, y, marker="o", label=f"{g.key} (n={g.n})")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.set_xticks(x)
    ax.set_xticklabels(lv.ladder_names, rotation=30, ha="right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("image condition (blur sigma as a fraction of the short side)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    return _png(fig)


def flip_png(result: DecayResult) -> bytes:
    """Return a PNG of the share of items whose answer first changes at each level."""
    lv = result.levels
    labels = ["never", *lv.ladder_names[1:]]
    groups = plotted_groups(result)
    width = 0.8 / max(1, len(groups))
    fig, ax = _figure()
    x = np.arange(len(labels))
    for j, g in enumerate(groups):
        v = np.asarray(g.values["flip_distribution"])
        err = np.stack(
            [
                v - np.asarray(g.low["flip_distribution"]),
                np.asarray(g.high["flip_distribution"]) - v,
            ]
        )
        ax.bar(
            x + j * width - 0.4 + width / 2,
            v,
            width,
            yerr=np.clip(err, 0, None),
            label=g.key,
            capsize=2,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel("share of items")
    ax.set_xlabel("first level at which the answer differs from clean")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)
