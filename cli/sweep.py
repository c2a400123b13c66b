"""Command ``priorscope sweep SWEEP.toml [--status]``: every model on every benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)

STATE_STYLE = {"complete": "green", "partial": "yellow", "absent": "dim", "unreadable": "red"}


def _status_table(statuses: list) -> Table:
    table = Table(title="Sweep status", title_justify="left")
    for name in ("model", "benchmark", "store", "committed", "analysed"):
        table.add_column(name, no_wrap=name != "store")
    for s in statuses:
        style = STATE_STYLE.get(s.store.state, "")
        state = f"[{style}]{s.store.state}[/{style}]" if style else s.store.state
        table.add_row(
            s.job.model.name,
            s.job.benchmark.name,
            s.job.store,
            f"{s.progress} {state}",
            "yes" if s.analysed else "no",
        )
    return table


def sweep_cmd(
    sweep: Path = typer.Argument(..., help="The sweep file (TOML): models, benchmarks, options."),
    status: bool = typer.Option(False, "--status", help="Print what is done and exit."),
    as_json: bool = typer.Option(False, "--json", help="With --status: print JSON rows."),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Dask scheduler of the analyses (overrides the file)."
    ),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Capture progress."),
) -> None:
    """Capture every model on every benchmark (one store each), analyse, write the table.

    Resumable: run the same command again after an interruption. Several processes share the
    work under torchrun: torchrun --nproc_per_node 4 $(which priorscope) sweep SWEEP.toml

    Example: priorscope sweep paper.toml --status
    """
    from priorscope.engine.sweep import load_sweep, run_sweep, status_json, sweep_status

    cfg = load_sweep(sweep)
    if status:
        statuses = sweep_status(cfg)
        if as_json:
            console.print_json(json.dumps(status_json(statuses)))
            return
        console.print(_status_table(statuses))
        done = sum(s.done for s in statuses)
        console.print(f"{done} of {len(statuses)} jobs done.")
        return
    result = run_sweep(cfg, scheduler=scheduler, log=console.print, progress=progress)
    actions = [o.action for o in result.outcomes]
    summary = ", ".join(f"{actions.count(a)} {a}" for a in dict.fromkeys(actions))
    console.print(f"Rank {result.rank}/{result.world}: {summary}.")
    if result.table is not None:
        console.print(f"Table: {result.table.html} (CSV {result.table.csv.name}, JSON)")


def register(app: typer.Typer) -> None:
    """Add this module's command to the root app."""
    app.command("sweep")(sweep_cmd)
