"""Commands ``priorscope probe STORE ...`` (train layer-wise probes) and ``priorscope probe info``.

Register with one line in cli/main.py's COMMAND_MODULES: ``"priorscope.cli.probe"``.
"""

from __future__ import annotations

import math
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

console = Console()


class _RunByDefault(TyperGroup):
    """A group where ``probe STORE ...`` means ``probe run STORE ...`` (``probe info`` stays)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _floats(text: str, name: str) -> tuple[float, ...]:
    from priorscope.engine.errors import UsageError

    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"Expected {name} as comma-separated numbers. Got {text!r}.") from None


def _ints(text: str, name: str) -> tuple[int, ...]:
    from priorscope.engine.errors import UsageError

    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"Expected {name} as comma-separated integers. Got {text!r}.") from None


def probe_run(
    store: str = typer.Argument(..., help="The capture store (STORE.zarr or a URL)."),
    out: str = typer.Option(None, "--out", help="Results store (default: STORE.probes.zarr)."),
    targets: str = typer.Option(
        "gold,answer,prior", help="gold, answer, prior, correct or any example column."
    ),
    kinds: str = typer.Option(
        "linear,mlp", help="linear (= ridge,logistic), ridge, logistic, mlp."
    ),
    sites: str = typer.Option("all", help="Site reductions: last,image_mean,text_mean or all."),
    layers: str = typer.Option("all", help="all, embed,resid.3, 0,4,8 or start:stop:step."),
    train: str = typer.Option("clean", help="Conditions to train on."),
    test: str = typer.Option("all", help="Conditions to test on (all: every captured one)."),
    folds: int = typer.Option(5, help="Grouped cross-validation folds."),
    seed: int = typer.Option(0, help="Seed of splits, controls and initialisations."),
    controls: bool = typer.Option(
        False, "--controls", help="Add control tasks and a permutation null."
    ),
    permutations: int = typer.Option(
        10, help="Permutation-null probes per cell (with --controls)."
    ),
    control_column: str = typer.Option("question", help="Item type of the control task."),
    group_by: str = typer.Option(
        "auto", "--group-by", help="Fold groups: auto (image hash), id or a column."
    ),
    min_class: int = typer.Option(
        10, "--min-class", help="Classes rarer than this are pooled or dropped."
    ),
    rare: str = typer.Option("pool", help="pool or drop rare classes."),
    ridge_alphas: str = typer.Option("1,10,100,1000,10000,100000", "--ridge-alphas"),
    logistic_cs: str = typer.Option("0.0001,0.001,0.01,0.1,1", "--logistic-cs"),
    mlp_hidden: str = typer.Option("64", "--mlp-hidden", help="MLP hidden sizes to choose from."),
    mlp_weight_decays: str = typer.Option("0.0001,0.01", "--mlp-weight-decays"),
    mlp_max_epochs: int = typer.Option(100, "--mlp-max-epochs"),
    workers: int = typer.Option(
        0, "--workers", help="LocalCluster worker processes (0: in-process)."
    ),
    scheduler: str = typer.Option(
        None, "--scheduler", help="Existing dask cluster, tcp://HOST:PORT."
    ),
    backend: str = typer.Option("auto", help="auto, cpu, cuda or cuml."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Train layer-wise probes on a store's hidden states, thousands at a time, and resume.

    Example: priorscope probe run.zarr --targets gold,prior --kinds linear --train clean --controls
    """
    from priorscope.engine.probes import ProbeConfig, fit_probes

    config = ProbeConfig(
        targets=targets,
        kinds=kinds,
        sites=None if sites == "all" else sites,
        layers=layers,
        train=train,
        test=test,
        folds=folds,
        seed=seed,
        controls=controls,
        permutations=permutations,
        control_column=control_column,
        group_column=group_by,
        min_class=min_class,
        rare=rare,
        ridge_alphas=_floats(ridge_alphas, "--ridge-alphas"),
        logistic_cs=_floats(logistic_cs, "--logistic-cs"),
        mlp_hidden=_ints(mlp_hidden, "--mlp-hidden"),
        mlp_weight_decays=_floats(mlp_weight_decays, "--mlp-weight-decays"),
        mlp_max_epochs=mlp_max_epochs,
        backend=backend,
    )
    with _progress(progress) as report:
        result = fit_probes(
            store, config, out, workers=workers, scheduler=scheduler, progress=report
        )
    console.print(summary_table(result))
    for line in target_lines(result):
        console.print(line, highlight=False)
    console.print(f"Probes written to [bold]{result.path}[/bold]")


class _progress:
    """A rich progress bar over tasks, or nothing."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return None
        from rich.progress import Progress

        self.bar = Progress(console=console, transient=True)
        self.bar.__enter__()
        self.task = self.bar.add_task("probes (layer x train condition)", total=None)

        def report(done: int, total: int) -> None:
            self.bar.update(self.task, completed=done, total=total)

        return report

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _pct(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{100 * value:.1f}"


def summary_table(result: Any, max_rows: int = 40) -> Table:
    """Return a table: per (target, kind, train, test, reduction) the best layer and its accuracy."""
    ds = result.to_xarray()[["accuracy", "selectivity", "majority"]].load()
    acc = ds["accuracy"]
    table = Table(
        title=f"Probes in {result.path}",
        title_justify="left",
        caption="accuracy % at the best layer; sel.: minus control-task accuracy; maj.: majority rate",
        caption_justify="left",
    )
    for col in (
        "target",
        "kind",
        "train",
        "test",
        "reduction",
        "best layer",
        "acc.",
        "sel.",
        "maj.",
    ):
        table.add_column(
            col, justify="left" if col in ("target", "kind", "train", "test") else "right"
        )
    rows = 0
    sites = list(result.attrs.get("site", []))
    for cell in acc.stack(c=("target", "kind", "train", "test", "reduction")).transpose(
        "c", "layer"
    ):
        values = cell.values
        if rows >= max_rows or not (values == values).any():
            continue
        best = int(
            max(range(len(values)), key=lambda i: -1.0 if values[i] != values[i] else values[i])
        )
        key = {d: str(cell[d].item()) for d in ("target", "kind", "train", "test", "reduction")}
        sel = ds["selectivity"].sel(**key).isel(layer=best).item()
        maj = ds["majority"].sel(**key).isel(layer=best).item()
        table.add_row(
            *key.values(),
            sites[best] if sites else str(best),
            _pct(values[best]),
            _pct(sel),
            _pct(maj),
        )
        rows += 1
    return table


def target_lines(result: Any) -> list[str]:
    """Return one line per target: class count, pooled and dropped classes, why unusable."""
    lines = []
    for t in result.targets:
        extra = []
        if t.get("pooled"):
            extra.append(f"rare classes pooled into '(other)': {t['pooled']}")
        if t.get("dropped"):
            extra.append(f"rare classes dropped: {t['dropped']}")
        if t.get("unlabelled"):
            extra.append(f"{t['unlabelled']} (example, condition) entries without a label")
        if t.get("note"):
            extra.append(f"not probed: {t['note']}")
        lines.append(
            f"target {t['name']}: {len(t['classes'])} classes" + "".join(f"; {e}" for e in extra)
        )
    return lines


def probe_info(
    path: str = typer.Argument(..., help="A probes results store (PROBES.zarr)."),
) -> None:
    """Describe a probes results store: its cells, targets, split, progress and best layers."""
    from priorscope.engine.probes import ProbeResult

    result = ProbeResult(path)
    attrs = result.attrs
    coords = attrs.get("coords", {})
    done = result.done()
    console.print(f"[bold]{path}[/bold]: probes of {attrs.get('config', {}).get('store', '?')}")
    for dim in ("target", "kind", "train", "test", "reduction"):
        console.print(f"  {dim}: {', '.join(map(str, coords.get(dim, [])))}")
    console.print(f"  layers: {', '.join(attrs.get('site', []))}")
    split = attrs.get("split", {})
    console.print(
        f"  split: {split.get('k')} folds grouped by {split.get('group_by')!r} "
        f"({split.get('n_groups')} groups), examples {attrs.get('n_examples')}"
    )
    if split.get("note"):
        console.print(f"  [yellow]note:[/yellow] {split['note']}")
    console.print(f"  tasks done: {int(done.sum())} of {done.size} (train x layer)")
    for line in target_lines(result):
        console.print(f"  {line}")
    console.print(summary_table(result))


def register(app: typer.Typer) -> None:
    """Add the ``probe`` command group to the root app."""
    probe_app = typer.Typer(
        cls=_RunByDefault,
        help="Layer-wise probes: priorscope probe STORE \\[options] | priorscope probe info PROBES.zarr",
        no_args_is_help=True,
    )
    probe_app.command("run")(probe_run)
    probe_app.command("info")(probe_info)
    app.add_typer(probe_app, name="probe")
