"""The self-contained HTML report: inline CSS, images as data URIs, no external resource."""

from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from priorscope.engine.analysis.decay_result import ci_cell

if TYPE_CHECKING:
    from priorscope.engine.analysis.decay_result import DecayResult, GroupResult
    from priorscope.engine.report.strips import StripItem

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#1d1d1f;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f4f4f6}td.l,th.l{text-align:left}.muted{color:#777}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
dd{margin:0;word-break:break-all}pre{background:#f6f6f8;padding:.6em;overflow-x:auto;
font-size:.8em}.strip{display:flex;gap:6px;flex-wrap:wrap;margin:.4em 0 1.2em}
.tile{text-align:center;font-size:.7em;width:100px}.tile img{border:1px solid #ccc;
display:block;margin:0 auto 2px;width:92px;height:auto}.wide{overflow-x:auto}.ok{color:#18794e}.bad{color:#c62828}
.notcomputed{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
.finding{margin:.3em 0}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
"""

SUMMARY_COLUMNS = (
    ("accuracy_all", "clean acc."),
    ("@total", "total acc."),
    ("normalised_auc", "norm. AUC"),
    ("strict_invariance", "strict inv."),
    ("blind_answerable", "blind-answ."),
    ("blind_answerable_adjusted", "blind-answ. − chance"),
    ("chance", "chance"),
    ("majority_rate", "majority answer"),
    ("visual_gain", "visual gain"),
    ("multimodal_gain", "MM gain"),
    ("leakage", "leakage"),
    ("accuracy_not_blind", "acc. not blind"),
    ("inflation", "inflation"),
)


def _cell(g: GroupResult, name: str, col: int | None = None) -> str:
    """Return 'value [low, high]' in percent for one statistic of a group."""
    if name not in g.values:
        return "—"
    v, lo, hi = g.values[name], g.low[name], g.high[name]
    if col is not None:
        v, lo, hi = v[col], lo[col], hi[col]
    text = ci_cell(float(v), float(lo), float(hi))
    value, _, interval = text.partition(" ")
    return f"{value}<br><small class=muted>{interval}</small>" if interval else value


def summary_table(result: DecayResult) -> str:
    """Return the HTML table of the headline metrics, one row per group, with 95% CIs."""
    total = result.levels.total
    head = "".join(f"<th>{escape(label)}</th>" for _, label in SUMMARY_COLUMNS)
    rows = []
    for g in result.groups:
        cells = []
        for name, _ in SUMMARY_COLUMNS:
            if name == "@total":
                cells.append("—" if total is None else _cell(g, "accuracy", total))
            else:
                cells.append(_cell(g, name))
        rows.append(
            f"<tr><td class=l>{escape(g.key)}</td><td>{g.n}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    return (
        f"<div class=wide><table><tr><th class=l>group</th><th>n</th>{head}</tr>"
        f"{''.join(rows)}</table></div>"
        "<p class=muted>Percent, with the 95% bootstrap interval in brackets. Chance is the "
        "accuracy of a uniform guess among the options (or the distinct gold answers); majority "
        "answer, that of always giving the most frequent gold answer. "
        "Definitions: <code>priorscope.engine.analysis.decay</code>.</p>"
    )


def level_table(result: DecayResult, g: GroupResult) -> str:
    """Return the per-condition table of one group: accuracy, invariance, flips, extraction."""
    names = result.levels.names
    rows = []
    for c, name in enumerate(names):
        cells = [
            _cell(g, m, c)
            for m in ("accuracy", "invariance", "became_correct", "extraction_failure")
        ]
        rows.append(
            f"<tr><td class=l>{escape(name)}</td>"
            + "".join(f"<td>{x}</td>" for x in cells)
            + "</tr>"
        )
    flips = g.values["flip_distribution"]
    labels = ("never", *result.levels.ladder_names[1:])
    flip_cells = "".join(
        f"<td>{escape(lab)}: {ci_cell(float(flips[i]), float(g.low['flip_distribution'][i]), float(g.high['flip_distribution'][i]))}</td>"
        for i, lab in enumerate(labels)
    )
    return (
        f"<details><summary>{escape(g.key)} (n={g.n}): per condition</summary><table>"
        "<tr><th class=l>condition</th><th>accuracy</th><th>invariance to clean</th>"
        "<th>became correct</th><th>no answer extracted</th></tr>"
        + "".join(rows)
        + "</table><table><tr><th class=l>first flip at</th>"
        + flip_cells
        + "</tr></table></details>"
    )


def provenance(attrs: dict[str, Any], extra: dict[str, Any]) -> str:
    """Return the provenance section: model, data, prompt, seeds and package versions."""
    items: list[tuple[str, str]] = []
    for key in ("model", "dataset", "processor", "seeds", "packages"):
        if key in attrs:
            items.append((key, json.dumps(attrs[key], sort_keys=True, default=str)))
    for key in ("created", "priorscope_version", "hidden_dtype"):
        if key in attrs:
            items.append((key, str(attrs[key])))
    items += [(k, str(v)) for k, v in extra.items()]
    body = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)
    prompt = attrs.get("prompt_template")
    pre = f"<p><b>prompt template</b></p><pre>{escape(str(prompt))}</pre>" if prompt else ""
    return f"<dl>{body}</dl>{pre}"


def strip_html(items: list[StripItem], names: tuple[str, ...]) -> str:
    """Return the example strips: one row of tiles per item, answer and score under each."""
    out = []
    for it in items:
        tiles = []
        for c, name in enumerate(names):
            mark = "ok" if it.scores[c] >= 0.5 else "bad"
            img = (
                (
                    f'<img alt="{escape(it.id)} {escape(name)}" '
                    f'src="data:image/png;base64,{it.tiles[c]}">'
                )
                if it.tiles[c]
                else ""
            )
            tiles.append(
                f"<div class=tile>{img}{escape(name)}<br>"
                f"<span class={mark}>{escape(it.answers[c] or '∅')}</span></div>"
            )
        flip = f"first flip at {escape(it.flip_level)}" if it.flip_level else "never flips"
        out.append(
            f"<p><b>{escape(it.kind)}</b> · <code>{escape(it.id)}</code> · "
            f"{escape(it.question)} · gold: {escape(', '.join(it.gold))} · {flip}</p>"
            f"<div class=strip>{''.join(tiles)}</div>"
        )
    return "".join(out)


def figure(png_b64: str, caption: str) -> str:
    """Return an embedded PNG figure with its caption."""
    return (
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{png_b64}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """Return the whole HTML document from (heading, inner html) sections."""
    body = "".join((f"<h2>{escape(h)}</h2>" if h else "") + inner for h, inner in sections)
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def json_safe(obj: Any) -> Any:
    """Return ``obj`` with numpy values turned into plain Python ones (nan -> None)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
