"""The paper's table of a sweep: one row per (model, benchmark), as HTML, CSV and JSON.

Each row holds clean accuracy, accuracy at every other level, the blind-answerable rate (raw
and minus chance), accuracy on the items that need the image, and the inflation, each with its
bootstrap interval. The numbers are read from each job's decay JSON, so the table can be
rebuilt from a finished sweep's files alone.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from priorscope.engine.analysis.decay import ci_cell

if TYPE_CHECKING:
    from priorscope.engine.sweep.config import Job, SweepConfig

HEADLINE_BEFORE = (("accuracy_all", "clean accuracy"),)
HEADLINE_AFTER = (
    ("blind_answerable", "blind-answerable"),
    ("blind_answerable_adjusted", "blind-answerable − chance"),
    ("accuracy_not_blind", "accuracy on items needing the image"),
    ("inflation", "inflation"),
)


@dataclass(frozen=True)
class TableFiles:
    """Where the combined table was written."""

    html: Path
    csv: Path
    json: Path


def _levels(docs: Sequence[dict[str, Any]]) -> list[str]:
    """Return the non-clean levels in ladder order (then ``none``), over every job."""
    out: list[str] = []
    for doc in docs:
        extra = [doc["none"]] if doc.get("none") else []
        for name in [*doc.get("ladder", [])[1:], *extra]:
            if name not in out:
                out.append(name)
    return out


def columns(docs: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Return (metric key, label) of every table column; per-level keys are ``accuracy@LEVEL``."""
    levels = [(f"accuracy@{name}", f"accuracy @ {name}") for name in _levels(docs)]
    return [*HEADLINE_BEFORE, *levels, *HEADLINE_AFTER]


def _estimate(group: dict[str, Any], key: str) -> dict[str, float | None]:
    metrics = group["metrics"]
    none: dict[str, float | None] = {"value": None, "low": None, "high": None}
    if key.startswith("accuracy@"):
        return dict(metrics["accuracy"].get(key[len("accuracy@") :], none))
    return dict(metrics.get(key, none))


def table_rows(cfg: SweepConfig, pairs: Sequence[tuple[Job, dict[str, Any]]]) -> dict[str, Any]:
    """Return the table as JSON-ready data: columns and one row per (model, benchmark group)."""
    cols = columns([doc for _, doc in pairs])
    rows = []
    for job, doc in pairs:
        report = job.report_html if cfg.analyses.report else None
        for group in doc.get("groups", []):
            if group.get("category") is not None:
                continue  # the table is per benchmark; categories are in each report
            rows.append(
                {
                    "model": job.model.name,
                    "benchmark": job.benchmark.name,
                    "group": group["benchmark"],
                    "n": group["n"],
                    "store": job.store,
                    "report": None if report is None else os.path.relpath(report, cfg.out_dir),
                    "metrics": {key: _estimate(group, key) for key, _ in cols},
                }
            )
    return {
        "columns": [{"key": k, "label": label} for k, label in cols],
        "rows": rows,
        "ci": cfg.analyses.ci,
        "n_boot": cfg.analyses.n_boot,
        "correct_at": cfg.analyses.correct_at,
    }


def to_csv(table: dict[str, Any]) -> str:
    """Return the table as CSV: value, low and high columns per metric, fractions in [0, 1]."""
    keys = [c["key"] for c in table["columns"]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    head = ["model", "benchmark", "group", "n"]
    for key in keys:
        head += [key, f"{key}_low", f"{key}_high"]
    writer.writerow([*head, "report"])
    for row in table["rows"]:
        cells: list[Any] = [row["model"], row["benchmark"], row["group"], row["n"]]
        for key in keys:
            est = row["metrics"][key]
            cells += ["" if est[k] is None else repr(est[k]) for k in ("value", "low", "high")]
        writer.writerow([*cells, row["report"] or ""])
    return buf.getvalue()


def _cell(est: dict[str, float | None]) -> str:
    nan = float("nan")
    value, low, high = (nan if est[k] is None else est[k] for k in ("value", "low", "high"))
    return ci_cell(value, low, high)


def to_html(table: dict[str, Any], title: str) -> str:
    """Return a self-contained HTML page of the table, each row linking its store's report."""
    from priorscope.engine.report import html as H

    head = "".join(f"<th>{H.escape(c['label'])}</th>" for c in table["columns"])
    body = []
    for row in table["rows"]:
        name = H.escape(row["benchmark"])
        if row["group"] != row["benchmark"]:
            name += f" <span class=muted>({H.escape(row['group'])})</span>"
        if row["report"]:
            name = f'<a href="{H.escape(row["report"])}">{name}</a>'
        cells = "".join(f"<td>{_cell(row['metrics'][c['key']])}</td>" for c in table["columns"])
        body.append(
            f"<tr><td class=l>{H.escape(row['model'])}</td><td class=l>{name}</td>"
            f"<td>{row['n']}</td>{cells}</tr>"
        )
    note = (
        f"<p class=muted>Percent, {100 * table['ci']:.0f}% bootstrap interval in brackets "
        f"({table['n_boot']} resamples); correct means score ≥ {table['correct_at']}. "
        "Blind-answerable: right under the most severe blur and under total obfuscation; "
        "inflation: clean accuracy minus accuracy on the items that are not blind-answerable. "
        "Each benchmark links its full report.</p>"
    )
    grid = (
        f"<div class=wide><table><tr><th class=l>model</th><th class=l>benchmark</th><th>n</th>"
        f"{head}</tr>{''.join(body)}</table></div>"
    )
    return H.page(title, [("Sweep results", note + grid)])


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_table(cfg: SweepConfig, pairs: Sequence[tuple[Job, dict[str, Any]]]) -> TableFiles:
    """Return the files after writing sweep.html, sweep.csv and sweep.json into ``cfg.out_dir``."""
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    table = table_rows(cfg, pairs)
    files = TableFiles(out / "sweep.html", out / "sweep.csv", out / "sweep.json")
    title = f"priorscope sweep: {Path(cfg.source).name}" if cfg.source else "priorscope sweep"
    _write(files.json, json.dumps(table, indent=1, allow_nan=False))
    _write(files.csv, to_csv(table))
    _write(files.html, to_html(table, title))
    return files


__all__ = ["TableFiles", "columns", "table_rows", "to_csv", "to_html", "write_table"]
