"""Figures of patching and the logit lens for the report: PNG bytes plus an HTML fragment.

``patch_section`` gives, per template, a heatmap (layer x position group) of the mean normalised
effect with its 95% bootstrap interval, one panel per direction (noising, denoising) and mode;
``readout_section`` (results kept with ``--keep``) the read-out of a target by patched layer
and kept layer; ``lens_section`` the mean logit-lens margin by layer per condition. The lead's report embeds
the fragments (PNG data URIs, no external resource).
"""

from __future__ import annotations

import base64
import io
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from priorscope.engine.patch.summary import Profile, effect_profiles, lens_profiles

if TYPE_CHECKING:
    from priorscope.engine.patch.lens import LensResult
    from priorscope.engine.patch.readout import Readout
    from priorscope.engine.patch.run import PatchResult
    from priorscope.engine.store import ExampleTable


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    """Return (figure, axes array) on the Agg canvas, independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Constrained layout leaves room for a shared colour bar (tight_layout cannot).
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _layer_label(layer: int) -> str:
    return "embed" if layer == -1 else str(layer)


def _num(x: float) -> str:
    return f"{x:.2f}".replace("-0.00", "0.00")


def heatmap_png(result: PatchResult, profiles: dict[str, Profile], key: str) -> bytes:
    """Return a PNG: one heatmap (group x layer) per (direction, mode) with mean and interval."""
    dirs, modes = result.direction_names, list(result.modes)
    fig, axes = _figure(
        1.1 + 0.9 * len(result.layers) * len(modes),
        0.9 + 1.1 * len(dirs) * len(result.groups) / 3 + 0.8,
        len(dirs),
        len(modes),
    )
    image = None
    for di, name in enumerate(dirs):
        prof = profiles[name]
        for mi, mode in enumerate(modes):
            ax = axes[di][mi]
            mean = prof.mean[:, :, mi].T  # [group, layer]
            image = ax.imshow(mean, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
            for gi in range(mean.shape[0]):
                for li in range(mean.shape[1]):
                    m = mean[gi, li]
                    lo, hi = prof.low[li, gi, mi], prof.high[li, gi, mi]
                    text = "—" if not np.isfinite(m) else f"{_num(m)}\n[{_num(lo)},{_num(hi)}]"
                    ink = "white" if np.isfinite(m) and abs(m) > 0.6 else "black"
                    ax.text(li, gi, text, ha="center", va="center", fontsize=6, color=ink)
            ax.set_xticks(range(len(result.layers)))
            ax.set_xticklabels([_layer_label(v) for v in result.layers], fontsize=7)
            ax.set_yticks(range(len(result.groups)))
            ax.set_yticklabels(list(result.groups), fontsize=7)
            ax.set_title(f"{key}: {name}, {mode} (n={int(prof.n.max(initial=0))})", fontsize=8)
            ax.set_xlabel("layer", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="normalised effect")
    return _png(fig)


def lens_png(result: LensResult, profiles: dict[str, Profile]) -> bytes:
    """Return a PNG: per template, the mean lens margin by layer, one line per condition."""
    keys = sorted(profiles)
    fig, axes = _figure(
        4.2 * min(len(keys), 3),
        3.2 * ((len(keys) + 2) // 3),
        (len(keys) + 2) // 3,
        min(len(keys), 3),
    )
    x = np.arange(len(result.layers))
    flat = axes.ravel()
    for ax, key in zip(flat, keys, strict=False):
        prof = profiles[key]
        for ci, cond in enumerate(result.conditions):
            (line,) = ax.plot(x, prof.mean[ci], marker="o", ms=3, label=cond)
            ax.fill_between(
                x, prof.low[ci], prof.high[ci], color=line.get_color(), alpha=0.15, lw=0
            )
        ax.axhline(0, color="#999", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels([_layer_label(v) for v in result.layers], fontsize=7)
        ax.set_title(f"{key} (n={int(prof.n.max(initial=0))})", fontsize=8)
        ax.set_xlabel("layer", fontsize=7)
        ax.set_ylabel("log p(gold) − log p(prior)", fontsize=7)
        ax.legend(fontsize=6)
    for ax in flat[len(keys) :]:
        ax.set_visible(False)
    return _png(fig)


def readout_png(ro: Readout) -> bytes:
    """Return a PNG: per (direction, group, mode), read-out accuracy [patched x kept layer]."""
    cells = [(d, g, m) for d in ro.directions for g in ro.groups for m in ro.modes]
    rows = [f"none ({c})" for c in ro.unpatched] + [_layer_label(v) for v in ro.layers]
    fig, axes = _figure(
        1.6 + 0.55 * len(ro.kept_layers) * len(cells), 1.0 + 0.28 * len(rows), 1, len(cells)
    )
    image = None
    for ax, (d, g, m) in zip(axes[0], cells, strict=True):
        acc = ro.cell(d, g, m).copy()  # [patched, kept]
        below = np.asarray(ro.layers)[:, None] > np.asarray(ro.kept_layers)[None, :]
        acc[below] = np.nan  # the target run's own state: drawn in the 'none' rows
        grid = np.vstack([np.stack(list(ro.unpatched.values())), acc]) if ro.unpatched else acc
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ink = "black" if v > 0.6 else "white"
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color=ink)
        ax.set_xticks(range(len(ro.kept_layers)))
        ax.set_xticklabels([_layer_label(v) for v in ro.kept_layers], fontsize=7)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=7)
        ax.set_xlabel("kept layer", fontsize=7)
        ax.set_ylabel("patched at", fontsize=7)
        ax.set_title(f"{d}, {g} {m} (n={ro.n})", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="held-out accuracy")
    return _png(fig)


def readout_section(ro: Readout) -> tuple[str, dict[str, bytes]]:
    """Return (HTML fragment, {file name: PNG}) of the read-out of kept states."""
    png = readout_png(ro)
    caption = (
        f"Read-out of {ro.target!r} at the answer position after each patch, by kept layer "
        f"(held-out accuracy of a linear probe, {ro.folds} folds by {ro.group_by}; majority "
        f"class {ro.majority:.2f}). After a patch, the kept layer where the read-out falls is the "
        "one that removes the patched-in signal; the 'none' rows are the unpatched runs."
    )
    return _figure_html(png, caption), {"patch_readout.png": png}


def _figure_html(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def patch_section(
    result: PatchResult, table: ExampleTable, by: str = "template"
) -> tuple[str, dict[str, bytes]]:
    """Return (HTML fragment, {file name: PNG}) of the patching heatmaps, one per template."""
    profiles = effect_profiles(result, table, by)
    # Templates where no example has a gold-vs-prior margin (e.g. text-only controls) are left out.
    keys = sorted({k for (k, _), p in profiles.items() if p.n.max(initial=0) > 0})
    pngs, parts = {}, []
    for key in keys:
        per_dir = {d: profiles[(key, d)] for d in result.direction_names}
        png = heatmap_png(result, per_dir, key)
        name = f"patch_{key}.png".replace("/", "_")
        pngs[name] = png
        parts.append(
            _figure_html(
                png,
                f"{key}: mean normalised effect of replacing each position group at each layer "
                "(0: none, 1: the patched run answers like the source run), 95% bootstrap "
                "interval over examples in brackets.",
            )
        )
    if result.agreement:
        rows = "".join(
            f"<tr><td class=l>{escape(k)}</td><td>{a.n_cells}</td><td>{a.pearson:.3f}</td>"
            f"<td>{a.spearman:.3f}</td><td>{a.sign_agreement:.3f}</td>"
            f"<td>{a.top_k_overlap:.2f} (k={a.top_k})</td></tr>"
            for k, a in result.agreement.items()
        )
        parts.append(
            "<table><tr><th class=l>estimate vs exact</th><th>cells</th><th>Pearson</th>"
            f"<th>Spearman</th><th>sign agreement</th><th>top-k overlap</th></tr>{rows}</table>"
        )
    return "".join(parts), pngs


def lens_section(
    result: LensResult, table: ExampleTable, by: str = "template"
) -> tuple[str, dict[str, bytes]]:
    """Return (HTML fragment, {file name: PNG}) of the logit-lens margins by layer."""
    png = lens_png(result, lens_profiles(result, table, by))
    caption = (
        "Logit lens (no model): mean gold-vs-prior log-prob margin of the answer-position "
        f"residual read through the final norm and the candidates' rows, by layer and "
        f"condition (95% bootstrap band). Last-layer check against the stored log-probs: "
        f"{result.check_error:.1e} (row-wise relative error)."
    )
    return _figure_html(png, caption), {"lens.png": png}


__all__ = ["heatmap_png", "lens_png", "lens_section", "patch_section"]
