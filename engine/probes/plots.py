"""The report's "probes by layer" panel: accuracy by layer per condition, beside the model's own.

One small plot per (target, reduction): held-out probe accuracy at every layer, one line per
test condition (probes trained on one condition), its 95% interval as a band, and dashed the
model's own accuracy under the same condition (for the gold target), with the chance and
majority rates. A target decodable at some layer while the model answers wrongly reads as
"decodable but not used" (suppression); one never decodable as a retrieval failure.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from priorscope.engine.probes.results import ProbeResult


@dataclass(frozen=True)
class Panel:
    """The panel as an HTML fragment (PNG embedded) and the PNG bytes alone."""

    html: str
    png: bytes


def _canvas(rows: int, cols: int) -> tuple[Any, Any]:
    """Return (figure, axes grid) on an off-screen Agg canvas (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * cols + 0.6, 2.6 * rows + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    return fig, axes


def _pick(values: list[Any], wanted: Any, default: Any) -> Any:
    if wanted is None:
        return default
    return wanted if isinstance(wanted, list | tuple) else [wanted]


def probes_panel(
    result: ProbeResult,
    *,
    kind: str | None = None,
    train: str | None = None,
    targets: list[str] | None = None,
    reductions: list[str] | None = None,
) -> Panel:
    """Return the "probes by layer" panel of ``result`` (defaults: the first kind, logistic if
    run, probes trained on the first training condition, every target and reduction)."""
    ds = result.to_xarray()[["accuracy", "ci_low", "ci_high", "chance", "majority"]].load()
    kinds = [str(k) for k in ds["kind"].values]
    kind = kind or ("logistic" if "logistic" in kinds else kinds[0])
    train = train or str(ds["train"].values[0])
    targets = _pick(kinds, targets, [str(t) for t in ds["target"].values])
    reductions = _pick(kinds, reductions, [str(r) for r in ds["reduction"].values])
    sites = list(result.attrs.get("site", [str(v) for v in ds["layer"].values]))
    model_acc = dict(result.attrs.get("model_accuracy", {}))
    fig, axes = _canvas(len(targets), len(reductions))
    x = np.arange(len(sites))
    for i, target in enumerate(targets):
        for j, red in enumerate(reductions):
            ax = axes[i][j]
            cell = ds.sel(target=target, kind=kind, train=train, reduction=red)
            _draw_cell(ax, cell, x, model_acc if target == "gold" else {})
            ax.set_title(f"{target} · {red}", fontsize=9)
            ax.set_xticks(x)
            ax.set_xticklabels(sites, rotation=60, fontsize=6)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("held-out accuracy")
    axes[0][0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{kind} probes trained on {train}, tested on each condition", fontsize=10)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    png = buf.getvalue()
    return Panel(_html(png, kind, train, result.path), png)


def _draw_cell(ax: Any, cell: Any, x: np.ndarray, model_acc: dict[str, float]) -> None:
    """Draw accuracy by layer per test condition, with bands, chance, majority and the model."""
    for test in cell["test"].values:
        c = cell.sel(test=test)
        acc = c["accuracy"].values
        if not np.isfinite(acc).any():
            continue
        (line,) = ax.plot(x, acc, marker="o", markersize=3, label=f"probe, {test}")
        ax.fill_between(
            x,
            c["ci_low"].values,
            c["ci_high"].values,
            color=line.get_color(),
            alpha=0.15,
            linewidth=0,
        )
        own = model_acc.get(str(test))
        if own is not None and np.isfinite(own):
            ax.axhline(
                own, color=line.get_color(), linestyle="--", linewidth=0.9, label=f"model, {test}"
            )
    chance = (
        np.nanmean(cell["chance"].values) if np.isfinite(cell["chance"].values).any() else np.nan
    )
    majority = cell["majority"].values
    if np.isfinite(chance):
        ax.axhline(chance, color="grey", linestyle=":", linewidth=0.9, label="chance")
    if np.isfinite(majority).any():
        ax.plot(
            x,
            np.nanmean(majority, axis=0),
            color="black",
            linestyle=":",
            linewidth=0.8,
            label="majority",
        )


def _html(png: bytes, kind: str, train: str, path: str) -> str:
    caption = (
        f"Probes by layer ({kind}, trained on {train}): held-out accuracy per test condition "
        "with 95% intervals; dashed, the model's own accuracy under that condition (gold "
        "target); dotted, chance and majority rates. Decodable where the model errs: the "
        "evidence is there but not used (suppression); never decodable: retrieval failure."
    )
    b64 = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="probes"><img alt="{escape(caption)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{escape(caption)} Source: {escape(path)}.</figcaption></figure>"
    )
