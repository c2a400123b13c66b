"""Commands that analyse a store: decay, export-grounded, report, and the demo main job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()

SCHEDULER_HELP = "Dask scheduler: threads, processes, sync, or a cluster address tcp://HOST:PORT."


def decay_table(result: Any, title: str = "Decay metrics") -> Table:
    """Return a rich table of the headline decay metrics, one row per group (percent, 95% CI)."""
    lv = result.levels
    table = Table(
        title=title,
        title_justify="left",
        caption=(
            "percent, 95% bootstrap interval below. blind: right under severe blur and total; "
            "adj.: blind minus chance (a uniform guess); grnd.: clean accuracy on items not blind-answerable; "
            "infl.: clean minus grnd."
        ),
        caption_justify="left",
    )
    # The terminal shows the headline numbers; the JSON and the report hold all of them.
    cols = [
        ("clean", "accuracy_all"),
        ("total", "@total"),
        ("AUC", "normalised_auc"),
        ("blind", "blind_answerable"),
        ("adj.", "blind_answerable_adjusted"),
        ("grnd.", "accuracy_not_blind"),
        ("infl.", "inflation"),
    ]
    table.add_column("group", no_wrap=True)
    for label, _ in cols:
        table.add_column(label, justify="right", min_width=6)
    total = None if lv.total is None else lv.names[lv.total]
    for g in result.groups:
        cells = []
        for _, name in cols:
            if name == "@total":
                cells.append("—" if total is None else _cell(g.estimate("accuracy", lv.total)))
            else:
                cells.append(_cell(g.estimate(name)) if name in g.values else "—")
        table.add_row(f"{g.key}\n[dim]n={g.n}[/dim]", *cells)
    return table


def _cell(est: Any) -> str:
    """Return a percent value over its 95% interval, two short lines for a narrow terminal."""
    import math

    if not math.isfinite(est.value):
        return "—"
    lo = "?" if not math.isfinite(est.low) else f"{100 * est.low:.0f}"
    hi = "?" if not math.isfinite(est.high) else f"{100 * est.high:.0f}"
    return f"{100 * est.value:.1f}\n[dim]{lo}–{hi}[/dim]"


def level_table(result: Any) -> Table:
    """Return a rich table of accuracy at every condition, one row per group (percent)."""
    table = Table(title="Accuracy by condition (%)", title_justify="left")
    table.add_column("group")
    for name in result.levels.names:
        table.add_column(name, justify="right")
    for g in result.groups:
        table.add_row(g.key, *(f"{100 * v:.1f}" for v in g.values["accuracy"]))
    return table


def decay_cmd(
    store: str = typer.Argument(..., help="A store written by 'priorscope capture' (path or URL)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write every number as JSON."),
    by: str = typer.Option("benchmark", "--by", help="benchmark, or category for both levels."),
    correct_at: float = typer.Option(0.5, help="A score at or above this counts as correct."),
    severe: str | None = typer.Option(None, help="Blur level used as 'severe' (default: most)."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for the 95% intervals."),
    ci: float = typer.Option(0.95, help="Confidence level of the intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    scheduler: str = typer.Option("threads", help=SCHEDULER_HELP),
    chunk_rows: int | None = typer.Option(None, help="Examples per dask block."),
) -> None:
    """Accuracy, invariance and blind-answerable rates along the blur ladder, with 95% CIs.

    Example: priorscope decay runs/qwen.zarr --by category --json decay.json
    """
    from priorscope.engine.analysis import DecayConfig, compute_decay

    cfg = DecayConfig(
        by=by,
        correct_at=correct_at,
        severe=severe,
        n_boot=n_boot,
        ci=ci,
        seed=seed,
        chunk_rows=chunk_rows,
        scheduler=scheduler,
    )
    result = compute_decay(store, cfg)
    console.print(decay_table(result))
    console.print(level_table(result))
    if result.n_uncommitted:
        console.print(f"[yellow]{result.n_uncommitted} uncommitted examples left out.[/yellow]")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=1, allow_nan=False))
        console.print(f"JSON: {json_out}")


def export_cmd(
    store: str = typer.Argument(..., help="A store written by 'priorscope capture' (path or URL)."),
    out: Path = typer.Option(..., "--out", help="Output file, in the benchmark's own format."),
    clean_at: float = typer.Option(0.5, help="Correct on clean: score at or above this."),
    wrong_below: float = typer.Option(0.5, help="Wrong when obfuscated: score below this."),
    severe: str | None = typer.Option(None, help="Blur level used as 'severe'."),
    require_severe: bool = typer.Option(
        True, "--severe-wrong/--no-severe", help="Require a wrong answer under the severe blur."
    ),
    require_total: bool = typer.Option(
        True, "--total-wrong/--no-total", help="Require a wrong answer under total obfuscation."
    ),
    dataset: Path | None = typer.Option(None, help="The input file, if it moved."),
) -> None:
    """Write the items that need the image (right on clean, wrong when obfuscated).

    Example: priorscope export-grounded runs/qwen.zarr --out mmstar_grounded.tsv
    """
    from priorscope.engine.analysis import GroundedConfig, export_grounded

    cfg = GroundedConfig(
        clean_at=clean_at,
        wrong_below=wrong_below,
        severe=severe,
        require_severe=require_severe,
        require_total=require_total,
        dataset=dataset,
    )
    res = export_grounded(store, out, cfg)
    console.print(
        f"Wrote {len(res.selected_ids)} of {res.n_examples} items ({res.format}) to {res.out}."
    )
    if res.inlined_images:
        console.print(f"{res.inlined_images} rows had the image they referenced inlined.")


def report_cmd(
    store: str = typer.Argument(..., help="A store written by 'priorscope capture' (path or URL)."),
    out: Path = typer.Option(Path("report.html"), "--out", help="The HTML file to write."),
    by: str = typer.Option("category", "--by", help="Lines per benchmark or per category."),
    flipped: int = typer.Option(3, help="Flipped items shown at every level."),
    invariant: int = typer.Option(3, help="Invariant items shown at every level."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for the 95% intervals."),
    dataset: Path | None = typer.Option(None, help="The input file, if it moved."),
    scheduler: str = typer.Option("threads", help=SCHEDULER_HELP),
) -> None:
    """Write one self-contained HTML report (plus PNGs and a JSON of every number).

    Example: priorscope report runs/qwen.zarr --out report.html
    """
    from priorscope.engine.analysis import DecayConfig
    from priorscope.engine.report import ReportConfig, write_report

    cfg = ReportConfig(
        n_flipped=flipped,
        n_invariant=invariant,
        dataset=dataset,
        decay=DecayConfig(by=by, n_boot=n_boot, scheduler=scheduler),
    )
    res = write_report(store, out, cfg)
    for line in res.findings:
        console.print(f"• {line}", highlight=False)
    console.print(f"Report: {res.html}  (JSON {res.json.name}, {len(res.pngs)} PNGs)")


def demo_cmd(
    out: Path = typer.Option(Path("priorscope_demo"), "--out", help="Folder for every output."),
    n: int = typer.Option(1000, help="Held-out synthetic items to generate."),
    seed: int = typer.Option(20261128, help="Seed of the held-out set (not a training seed)."),
    prior_rate: float = typer.Option(0.6, help="Planted prior rate of the held-out set."),
    model: str = typer.Option("builtin:organism", help="Model to diagnose (a path works too)."),
    probes: bool = typer.Option(True, "--probes/--no-probes", help="Fit layer-wise probes."),
    patch_examples: int = typer.Option(
        48, help="Examples captured with full sequences for layer replacement (0: none)."
    ),
) -> None:
    """The main job: synthetic benchmark -> capture the built-in organism -> decay, probes,
    logit lens, layer replacement -> report.

    Example: priorscope demo --out demo_out
    """
    from priorscope.engine.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=out,
        n=n,
        seed=seed,
        prior_rate=prior_rate,
        model=model,
        probes=probes,
        patch_examples=patch_examples,
    )
    res = run_demo(cfg, console=console)
    console.print(decay_table(res.report.decay, title=f"Decay of {cfg.model}"))
    console.print("[bold]What it found[/bold] (check against the planted truth):")
    for line in res.sentences:
        console.print(f"• {line}", highlight=False)
    console.print(f"Report: [bold]{res.report.html}[/bold]  ({res.seconds:.0f} s)")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("decay")(decay_cmd)
    app.command("export-grounded")(export_cmd)
    app.command("report")(report_cmd)
    app.command("demo")(demo_cmd)
