"""The report's sections on the analyses that read hidden states: probes, patching, logit lens.

Each draws from its results store at the default path beside the capture store
(``<store>.probes.zarr``, ``<store>.patch.zarr``, ``<store>.lens.zarr``); the analysis module
is imported only when its results are there. A section whose results cannot be drawn (written
by another version, or still incomplete) says why instead of failing the whole report; one
whose results are absent says "Not computed" and the command that computes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

from priorscope.engine.errors import PriorscopeError
from priorscope.engine.store import ExampleTable, Store, find_results

# The report's section on each later analysis, by the kind of results store it writes.
LATER_ANALYSES = {
    "probes": "Probes: where is the answer decodable?",
    "patch": "Layer replacement: where is the visual evidence lost?",
    "lens": "Logit lens: where does the answer take the lead?",
}
COMMANDS = {
    "probes": "priorscope probe STORE",
    "patch": "priorscope patch STORE --source total --target clean",
    "lens": "priorscope lens STORE",
}


@dataclass
class LaterSection:
    """One later analysis in the report: its title, HTML body, figures and JSON summary."""

    kind: str
    title: str
    present: bool
    html: str
    pngs: dict[str, bytes] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _probes(info: dict[str, Any], table: ExampleTable, store: Store) -> LaterSection:
    from priorscope.engine.probes.plots import probes_panel
    from priorscope.engine.probes.results import ProbeResult

    result = ProbeResult(info["path"])
    panel = probes_panel(result)
    summary = {"path": info["path"], "targets": result.targets}
    # What happened to each target's classes (pooled, dropped, nothing left to probe).
    notes = "".join(
        f"<li><b>{escape(str(t.get('name')))}</b>: {escape(str(t['note']))}</li>"
        for t in result.targets
        if t.get("note")
    )
    body = panel.html + (f"<ul class=muted>{notes}</ul>" if notes else "")
    return LaterSection("probes", "", True, body, {"probes.png": panel.png}, summary)


def _patch(info: dict[str, Any], table: ExampleTable, store: Store) -> LaterSection:
    from priorscope.engine.patch.plots import patch_section
    from priorscope.engine.patch.read import read_patch

    result = read_patch(info["path"])
    if not result.exact:
        body = (
            "<p>The store holds first-order estimates only (<code>patch --estimate</code>); "
            "heatmaps are drawn from exact replacement (<code>patch --exact</code>).</p>"
        )
        pngs: dict[str, bytes] = {}
    else:
        body, pngs = patch_section(result, table)
    summary = {
        "path": info["path"],
        "directions": result.direction_names,
        "layers": list(result.layers),
        "groups": list(result.groups),
        "modes": list(result.modes),
        "n_examples": len(result.rows),
        "agreement": {k: a.to_json() for k, a in result.agreement.items()},
        "top_cells": result.top_cells,
    }
    if "kept" in result.exact:
        body += _readout(store, result, pngs, summary)
    return LaterSection("patch", "", True, body, pngs, summary)


# The target the report reads from kept states (``patch --keep``).
READOUT_TARGET = "gold"


def _readout(store: Store, result: Any, pngs: dict[str, bytes], summary: dict[str, Any]) -> str:
    """Return the read-out figure of the kept states (or why there is none); adds its PNG and
    numbers to ``pngs`` and ``summary``."""
    from priorscope.engine.patch.plots import readout_section
    from priorscope.engine.patch.readout import readout

    try:
        ro = readout(store, result, READOUT_TARGET)
    except PriorscopeError as exc:
        return f"<p class=muted>Kept states present; no read-out of {READOUT_TARGET!r}: {escape(str(exc))}</p>"
    body, figure = readout_section(ro)
    pngs.update(figure)
    summary["readout"] = ro.to_json()
    return body


def _lens(info: dict[str, Any], table: ExampleTable, store: Store) -> LaterSection:
    from priorscope.engine.patch.plots import lens_section
    from priorscope.engine.patch.read import read_lens

    result = read_lens(info["path"])
    body, pngs = lens_section(result, table)
    summary = {
        "path": info["path"],
        "conditions": list(result.conditions),
        "layers": list(result.layers),
        "n_examples": len(result.rows),
        "check_error": result.check_error,
    }
    return LaterSection("lens", "", True, body, pngs, summary)


DRAW = {"probes": _probes, "patch": _patch, "lens": _lens}


def later_sections(store: Store, table: ExampleTable) -> list[LaterSection]:
    """Return one section per later analysis, drawn from the results found beside ``store``."""
    found = find_results(store.path)
    out = []
    for kind, title in LATER_ANALYSES.items():
        if kind not in found:
            body = (
                "<p class=notcomputed><b>Not computed.</b> The store holds no results of this "
                f"analysis yet: run <code>{escape(COMMANDS[kind])}</code>, then the report "
                "again.</p>"
            )
            out.append(LaterSection(kind, title, False, body))
            continue
        try:
            section = DRAW[kind](found[kind], table, store)
        except (PriorscopeError, KeyError, ValueError, OSError) as err:
            body = (
                f"<p class=notcomputed><b>Present but not drawn.</b> The results at "
                f"<code>{escape(found[kind]['path'])}</code> could not be read as {kind} "
                f"results: {escape(str(err))}. Recompute them with "
                f"<code>{escape(COMMANDS[kind])}</code>.</p>"
            )
            section = LaterSection(kind, title, True, body, summary={"error": str(err)})
        section.title = title
        out.append(section)
    return out


__all__ = ["COMMANDS", "LATER_ANALYSES", "LaterSection", "later_sections"]
