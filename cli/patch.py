"""Commands ``priorscope lens`` and ``priorscope patch``: parse, build the config, call, print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _default_out(store: Path, suffix: str) -> Path:
    name = store.name[: -len(".zarr")] if store.name.endswith(".zarr") else store.name
    return store.parent / f"{name}.{suffix}.zarr"


def _layer(v: int) -> str:
    return "embed" if v == -1 else str(v)


def lens_cmd(
    store: Path = typer.Argument(..., help="A store written by 'priorscope capture'."),
    out: Path | None = typer.Option(None, "--out", help="Results store (default STORE.lens.zarr)."),
    prior_condition: str = typer.Option(
        "total", "--prior-condition", help="Condition whose answer is the prior."
    ),
    by: str = typer.Option("template", "--by", help="Example column to group by."),
) -> None:
    """Logit lens with no model: gold-vs-prior margin of every example by layer and condition.

    Example: priorscope lens run.zarr
    """
    from priorscope.engine.patch import lens
    from priorscope.engine.patch.summary import lens_profiles
    from priorscope.engine.store import open_store

    handle = open_store(store)
    target = out or _default_out(store, "lens")
    result = lens(handle, out=target, prior_condition=prior_condition)
    profiles = lens_profiles(result, handle.examples(), by)
    table = Table(
        title="Logit lens: mean log p(gold) − log p(prior) by layer", title_justify="left"
    )
    table.add_column(by, no_wrap=True)
    table.add_column("condition")
    for v in result.layers:
        table.add_column(_layer(v), justify="right", min_width=5)
    for key, prof in profiles.items():
        for ci, cond in enumerate(result.conditions):
            table.add_row(key, cond, *(f"{m:.2f}" if m == m else "—" for m in prof.mean[ci]))
    console.print(table)
    console.print(
        f"Last-layer check against the stored log-probs: {result.check_error:.1e} "
        f"(row-wise relative error). Results: {target}"
    )


def patch_cmd(
    store: Path = typer.Argument(..., help="A store with full sequences (capture --full-seq N)."),
    source: str = typer.Option("total", "--source", help="Run whose states are spliced in."),
    target: str = typer.Option("clean", "--target", help="Run they are spliced into."),
    layers: str = typer.Option("all", "--layers", help="all, embed,resid.2 or 0:8:2."),
    groups: str = typer.Option("image,text,last", "--groups", help="Position groups."),
    mode: str = typer.Option("state,write", "--mode", help="state, write or both (comma list)."),
    examples: int | None = typer.Option(None, "--examples", help="First N full-seq examples."),
    exact: bool = typer.Option(False, "--exact", help="Exact suffix replay (the default)."),
    estimate: bool = typer.Option(False, "--estimate", help="First-order estimates (--grad)."),
    one_way: bool = typer.Option(
        False, "--one-way", help="Skip the reverse (denoising) direction."
    ),
    model: str | None = typer.Option(None, "--model", help="Override the recorded model path."),
    out: Path | None = typer.Option(
        None, "--out", help="Results store (default STORE.patch.zarr)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    batch_size: int = typer.Option(64, "--batch-size", help="Patches per decoder batch."),
    by: str = typer.Option("template", "--by", help="Example column to group the table by."),
    keep: str | None = typer.Option(
        None,
        "--keep",
        help="Layers whose answer-position states each patched run keeps (final, all, a list).",
    ),
    readout: str | None = typer.Option(
        None,
        "--readout",
        help="Read this target (gold, answer, a column) from the kept states; keeps all layers "
        "unless --keep says otherwise.",
    ),
    folds: int = typer.Option(5, "--folds", help="Folds of the --readout probes."),
) -> None:
    """Counterfactual layer replacement from the cache (both directions unless --one-way).

    Example: priorscope patch run.zarr --source total --target clean --groups image,last

    Where is a retrieved signal suppressed? Put the clean run's answer-position state into the
    run without the image and read the signal at every later layer:
    priorscope patch run.zarr --source clean --target total --one-way --groups last
    --mode state --readout gold
    """
    from priorscope.engine.patch import PatchConfig, patch
    from priorscope.engine.store import open_store

    method = "both" if exact and estimate else ("estimate" if estimate else "exact")
    if readout and method == "estimate":
        from priorscope.engine.errors import UsageError

        raise UsageError(
            "Expected exact replay for --readout (it reads the replayed states). Got --estimate "
            "alone; add --exact, or drop --readout."
        )
    modes = (
        ("state", "write")
        if mode.strip() == "both"
        else tuple(m.strip() for m in mode.split(",") if m.strip())
    )
    cfg = PatchConfig(
        source=source,
        target=target,
        both_directions=not one_way,
        layers=layers,
        groups=tuple(g.strip() for g in groups.split(",") if g.strip()),
        modes=modes,
        examples=examples,
        method=method,
        model=model,
        out=str(out or _default_out(store, "patch")),
        device=device,
        batch_size=batch_size,
        keep=keep if keep is not None else ("all" if readout else ""),
    )
    handle = open_store(store)
    result = patch(handle, cfg)
    if result.exact:
        _print_effects(result, handle.examples(), by)
    if readout and result.exact:
        from priorscope.engine.patch import readout as read_out

        _print_readout(read_out(handle, result, readout, folds=folds))
    for name, agree in result.agreement.items():
        a = agree.to_json()
        console.print(
            f"estimate vs exact ({name}): {a['n_cells']} cells, Pearson {a['pearson']:.3f}, "
            f"Spearman {a['spearman']:.3f}, sign agreement {a['sign_agreement']:.3f}, "
            f"top-{a['top_k']} overlap {a['top_k_overlap']:.2f}"
        )
    console.print(f"Results: {result.path}")


def _print_effects(result: Any, table: Any, by: str) -> None:
    from priorscope.engine.patch.summary import effect_profiles

    profiles = effect_profiles(result, table, by)
    out = Table(
        title="Mean normalised effect by layer (0: none, 1: answers like the source run)",
        title_justify="left",
    )
    for col in (by, "n", "direction", "group", "mode"):
        out.add_column(col, overflow="fold")
    for v in result.layers:
        out.add_column(_layer(v), justify="right", min_width=5)
    for (key, direction), prof in profiles.items():
        for gi, group in enumerate(result.groups):
            for mi, m in enumerate(result.modes):
                cells = (f"{x:.2f}" if x == x else "—" for x in prof.mean[:, gi, mi])
                n = str(int(prof.n.max(initial=0)))
                out.add_row(key, n, direction, group, m, *cells)
    console.print(out)


def _print_readout(ro: Any) -> None:
    def num(a: float) -> str:
        return f"{a:.2f}" if a == a else "—"

    console.print(
        f"Read-out of {ro.target!r} at the answer position (held-out accuracy of a linear probe, "
        f"{ro.folds} folds by {ro.group_by}, n {ro.n}; majority class {ro.majority:.2f})."
    )
    for direction in ro.directions:
        for group in ro.groups:
            for mode in ro.modes:
                out = Table(
                    title=f"{direction}, {group} {mode}: read-out by kept layer",
                    title_justify="left",
                )
                out.add_column("patched at", no_wrap=True)
                for v in ro.kept_layers:
                    out.add_column(_layer(v), justify="right", min_width=4)
                for cond, acc in ro.unpatched.items():
                    out.add_row(f"none ({cond})", *(num(a) for a in acc))
                for layer, acc in zip(ro.layers, ro.cell(direction, group, mode), strict=True):
                    cells = (
                        num(a) if v >= layer else "·"
                        for v, a in zip(ro.kept_layers, acc, strict=True)
                    )
                    out.add_row(_layer(layer), *cells)
                console.print(out)
    console.print(
        "After a patch, the kept layer where the read-out falls is the one that removes the "
        "patched-in signal ('·': below the patched layer, the target run's own state)."
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("lens")(lens_cmd)
    app.command("patch")(patch_cmd)
