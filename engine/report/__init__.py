"""The report of a store: one self-contained HTML file, its figures as PNG, every number as JSON.

``write_report(store, out)`` writes ``out`` (e.g. ``report.html``) and, beside it,
``<stem>_accuracy.png``, ``<stem>_invariance.png``, ``<stem>_flips.png`` and ``<stem>.json``.
When probes, patching or logit-lens results sit beside the store (their default paths), their
sections are drawn too (``<stem>_probes.png``, ``<stem>_patch_<template>.png``,
``<stem>_lens.png``); otherwise each says "Not computed" and the command that computes it.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from priorscope.engine.analysis.decay import DecayConfig, compute_decay
from priorscope.engine.analysis.decay_result import DecayResult, GroupResult
from priorscope.engine.analysis.export import dataset_path
from priorscope.engine.errors import UsageError
from priorscope.engine.report import html as H
from priorscope.engine.report.later import LATER_ANALYSES, LaterSection, later_sections
from priorscope.engine.report.plots import curve_png, flip_png
from priorscope.engine.report.strips import build_strips, pick_rows
from priorscope.engine.store import ExampleTable, Store, find_results, open_store


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows: decay settings, how many example items, extra findings.

    Validated on construction, so a config built in Python is checked like the CLI's.
    """

    decay: DecayConfig = field(default_factory=lambda: DecayConfig(by="category"))
    n_flipped: int = 3
    n_invariant: int = 3
    seed: int = 0
    dataset: Path | None = None  # the input file, when it moved since capture
    title: str = "priorscope report"
    findings: tuple[str, ...] = ()  # sentences prepended to the generated findings

    def __post_init__(self) -> None:
        for name, flag, value in (
            ("n_flipped", "--flipped", self.n_flipped),
            ("n_invariant", "--invariant", self.n_invariant),
        ):
            if not 0 <= value <= 50:
                raise UsageError(f"Expected {name} ({flag}) between 0 and 50. Got {value} instead.")
        if self.dataset is not None and not isinstance(self.dataset, Path):
            object.__setattr__(self, "dataset", Path(self.dataset))
        object.__setattr__(self, "findings", tuple(self.findings))


def later_analyses_present(store: Store) -> dict[str, bool]:
    """Return {section title: whether a results store of that analysis sits beside ``store``}.

    Results stores record their own group declaration, so finding them imports no analysis.
    """
    found = find_results(store.path)
    return {title: kind in found for kind, title in LATER_ANALYSES.items()}


@dataclass(frozen=True)
class ReportResult:
    """The files a report wrote, and the decay result it shows."""

    html: Path
    pngs: tuple[Path, ...]
    json: Path
    decay: DecayResult
    findings: tuple[str, ...]


def finding(g: GroupResult, total_name: str | None) -> str:
    """Return one plain-language sentence summarising a group's decay."""
    v = g.values

    def pct(x: Any) -> str:
        x = float(x)
        return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"

    parts = [f"{g.key} (n={g.n}): clean accuracy {pct(v['accuracy_all'])}"]
    if total_name is not None and "visual_gain" in v:
        total_acc = float(v["accuracy_all"]) - float(v["visual_gain"])
        parts.append(
            f"{pct(total_acc)} correct under {total_name} (chance {pct(v['chance'])}, "
            f"majority answer {pct(v['majority_rate'])})"
        )
    parts.append(f"{pct(v['blind_answerable'])} blind-answerable")
    parts.append(
        f"accuracy on items that need the image {pct(v['accuracy_not_blind'])}, "
        f"inflation {100 * float(v['inflation']):+.0f} points"
        if math.isfinite(float(v["inflation"]))
        else "every item is blind-answerable"
    )
    return "; ".join(parts) + "."


def write_report(
    store: Store | str | Path, out: str | Path, config: ReportConfig | None = None
) -> ReportResult:
    """Return the written files after rendering the report of ``store`` to ``out`` (.html).

    ``store`` is a Store or a path (opened once here).
    """
    config = config or ReportConfig()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    snap = open_store(store).snapshot()
    tables = snap.examples()
    result = compute_decay(snap, config.decay)
    picks = pick_rows(result, config.n_flipped, config.n_invariant, config.seed)
    items, note = build_strips(
        result,
        tables,
        snap.outputs("answer"),
        snap.outputs("score"),
        picks,
        dataset_path(snap.attrs, config.dataset),
    )
    pngs = {
        "accuracy": curve_png(result, "accuracy", "accuracy"),
        "invariance": curve_png(result, "invariance", "answer equals clean answer"),
        "flips": flip_png(result),
    }
    png_paths = []
    for name, data in pngs.items():
        p = out.with_name(f"{out.stem}_{name}.png")
        p.write_bytes(data)
        png_paths.append(p)
    b64 = {k: base64.b64encode(v).decode("ascii") for k, v in pngs.items()}

    later = later_sections(snap, tables)
    for section in later:
        for name, data in section.pngs.items():
            p = out.with_name(f"{out.stem}_{name}")
            p.write_bytes(data)
            png_paths.append(p)
    total_name = None if result.levels.total is None else result.levels.names[result.levels.total]
    findings = (*config.findings, *(finding(g, total_name) for g in result.groups))
    present = {s.title: s.present for s in later}
    html = _render(result, tables, snap.attrs, config, b64, items, note, findings, later)
    out.write_text(html, encoding="utf-8")
    doc = {
        "decay": result.to_json(),
        "provenance": H.json_safe(snap.attrs),
        "findings": list(findings),
        "later_analyses": present,
        "later": {s.kind: H.json_safe(s.summary) for s in later if s.present},
        "strips": [H.json_safe({k: getattr(it, k) for k in STRIP_FIELDS}) for it in items],
        "files": {"html": out.name, "png": [p.name for p in png_paths]},
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")
    return ReportResult(out, tuple(png_paths), json_path, result, tuple(findings))


STRIP_FIELDS = ("kind", "id", "question", "gold", "flip_level", "answers", "scores")


def _render(
    result: DecayResult,
    tables: ExampleTable,
    attrs: dict[str, Any],
    config: ReportConfig,
    b64: dict[str, str],
    items: list,
    note: str,
    findings: tuple[str, ...],
    later: list[LaterSection],
) -> str:
    """Return the report's HTML."""
    lv = result.levels
    severe = "—" if lv.severe is None else lv.names[lv.severe]
    extra = {
        "store": str(result.store),
        "committed examples": tables.n,
        "uncommitted examples (left out)": tables.n_uncommitted,
        "conditions": ", ".join(lv.names),
        "severe level": severe,
        "decay settings": json.dumps(config.decay.to_json()),
    }
    text = "".join(f"<p class=finding>{H.escape(f)}</p>" for f in findings)
    strips = H.strip_html(items, lv.names) if items else "<p>No items to show.</p>"
    if note:
        strips = f"<p class=muted>{H.escape(note)}</p>" + strips
    sections = [
        ("Findings", text),
        (
            "Decay curves",
            H.figure(b64["accuracy"], "Accuracy at each level, 95% bootstrap bands")
            + H.figure(b64["invariance"], "Share of answers equal to the clean answer, 95% bands")
            + H.figure(b64["flips"], "Where answers first change"),
        ),
        (
            "Metrics",
            H.summary_table(result) + "".join(H.level_table(result, g) for g in result.groups),
        ),
        ("Example items at every level", strips),
        ("Provenance", H.provenance(attrs, extra)),
    ]
    sections[-1:-1] = [(s.title, s.html) for s in later]
    return H.page(config.title, sections)
