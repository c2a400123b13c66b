"""Commands of the model group: ``priorscope organism train|eval`` and ``priorscope model info``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from priorscope.engine.errors import UsageError

console = Console()
_PRESET_HELP = "organism (builtin:organism, the default) or bottleneck (builtin:bottleneck)."


def _threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise UsageError(f"Expected --threads >= 1. Got {threads}.")
    torch.set_num_threads(threads)


def _names(text: str | None, known: Any, what: str) -> tuple[str, ...] | None:
    from priorscope.engine.data.synth import parse_names

    return None if text is None else parse_names(text, tuple(known), what)


def _layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(
            f"Expected comma-separated layer numbers, e.g. 6,7. Got {text!r} instead."
        ) from None


def _plant(base: Any, templates: str | None, suppressed: str | None, hidden: str | None) -> Any:
    """Return the preset's PlantSpec with the given planted options replaced."""
    from priorscope.engine.data.synth import PRIOR_OBJECTS, SHAPES, parse_templates

    changes: dict[str, Any] = {}
    if templates is not None:
        changes["templates"] = parse_templates(templates)
    objects = _names(suppressed, PRIOR_OBJECTS, "prior object (--suppressed)")
    if objects is not None:
        changes["suppressed"] = objects
    shapes = _names(hidden, SHAPES, "shape (--not-retrieved)")
    if shapes is not None:
        changes["not_retrieved"] = shapes
    return replace(base, **changes)


def organism_train(
    out: Path = typer.Option(..., "--out", help="Folder to write the checkpoint to."),
    preset: str = typer.Option("organism", "--preset", help=_PRESET_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed for data, mix and initialisation."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (AdamW, cosine)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Rows per step."),
    n_train: int = typer.Option(None, "--n-train", help="Synthetic training rows."),
    uninformative_rate: float = typer.Option(
        None, "--uninformative-rate", help="Fraction of rows whose image carries no evidence."
    ),
    aux_weight: float = typer.Option(
        None, "--aux-weight", help="Weight of the per-image-token scene loss (0: off)."
    ),
    binding_weight: float = typer.Option(
        None, "--binding-weight", help="Weight of the answer read-out at the question word."
    ),
    vision_freeze_steps: int = typer.Option(
        None, "--vision-freeze-steps", help="Steps the vision tower stays at its random init."
    ),
    vision_lr_scale: float = typer.Option(
        None, "--vision-lr-scale", help="Vision tower lr multiplier; 0 freezes it at random init."
    ),
    layers: int = typer.Option(None, "--layers", help="Decoder layers."),
    templates: str = typer.Option(
        None, "--templates", help="Synth template cycle, e.g. color,prior."
    ),
    suppressed: str = typer.Option(
        None, "--suppressed", help="Prior objects always answered canonical, e.g. banana,carrot."
    ),
    not_retrieved: str = typer.Option(
        None, "--not-retrieved", help="Shapes whose colour (detail rows) is never retrieved."
    ),
    readout_weight: float = typer.Option(
        None, "--readout-weight", help="Weight of the drawn-colour read-out of suppressed rows."
    ),
    readout_layer: int = typer.Option(
        None, "--readout-layer", help="Layer where suppressed rows' drawn colour is read out."
    ),
    suppress_weight: float = typer.Option(
        None, "--suppress-weight", help="Weight of the suppressed rows' invariance loss."
    ),
    suppress_layers: str = typer.Option(
        None, "--suppress-layers", help="Layers whose text states ignore a suppressed colour."
    ),
    freeze_layers: str = typer.Option(
        None, "--freeze-layers", help="Decoder layers whose weights stay fixed, e.g. 6,7."
    ),
    hide_weight: float = typer.Option(
        None, "--hide-weight", help="Weight of the not-retrieved rows' invariance loss."
    ),
    erase_weight: float = typer.Option(
        None, "--erase-weight", help="Weight of the linear-erasure loss of planted colours."
    ),
    hide_erase_weight: float = typer.Option(
        None,
        "--hide-erase-weight",
        help="Weight of a separate linear-erasure loss of not-retrieved colours (every layer).",
    ),
    hide_attn_weight: float = typer.Option(
        None,
        "--hide-attn-weight",
        help="Weight of the attention not-retrieved rows' text pays to their shape's image token.",
    ),
    hide_attn_layers: str = typer.Option(
        None, "--hide-attn-layers", help="Layers that attention loss reads, e.g. 0,5,6,7 (all)."
    ),
    hide_attn_to: str = typer.Option(
        None,
        "--hide-attn-to",
        help="What that loss keeps them from: shape (its image token) or image (every one).",
    ),
    swap_weight: float = typer.Option(
        None,
        "--swap-weight",
        help="Weight of keeping suppressed answers' logits when twins swap a layer's write.",
    ),
    swap_layers: str = typer.Option(
        None, "--swap-layers", help="Layers whose answer-position write twins swap, e.g. 6."
    ),
    plant_start: int = typer.Option(
        None, "--plant-start", help="Step the invariance and erasure losses start at."
    ),
    plant_ramp: int = typer.Option(
        None, "--plant-ramp", help="Steps they take from 0 to full weight."
    ),
    init: str = typer.Option(
        None, "--init", help="Start from this checkpoint (folder or builtin:NAME), not at random."
    ),
    one_stage: bool = typer.Option(
        False,
        "--one-stage",
        help="Train only the first stage of a two-stage preset (bottleneck: no fine-tune).",
    ),
    save_every: int = typer.Option(
        0, "--save-every", help="Also save DIR/step-N every this many steps (0: only at the end)."
    ),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
) -> None:
    """Train a model organism (a tiny Qwen2.5-VL) on synthetic data from scratch.

    A preset's defaults reproduce its shipped checkpoint; any option given replaces one setting.
    The bottleneck preset trains in two stages: the options set the first; the second (its
    fine-tune, saved in OUT, the first kept in OUT/stage-1) changes only what the preset's
    `then` names. --one-stage stops after the first.

    Example: priorscope organism train --out bottleneck_ckpt --preset bottleneck --seed 0
    """
    from priorscope.engine.training.organism import preset as get_preset
    from priorscope.engine.training.organism import train

    _threads(threads)
    base = get_preset(preset)
    given = {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "n_train": n_train,
        "uninformative_rate": uninformative_rate,
        "aux_weight": aux_weight,
        "binding_weight": binding_weight,
        "vision_lr_scale": vision_lr_scale,
        "vision_freeze_steps": vision_freeze_steps,
        "readout_weight": readout_weight,
        "readout_layer": readout_layer,
        "suppress_weight": suppress_weight,
        "suppress_layers": _layers(suppress_layers),
        "freeze_layers": _layers(freeze_layers),
        "hide_weight": hide_weight,
        "erase_weight": erase_weight,
        "hide_erase_weight": hide_erase_weight,
        "hide_attn_weight": hide_attn_weight,
        "hide_attn_layers": _layers(hide_attn_layers),
        "hide_attn_to": hide_attn_to,
        "swap_weight": swap_weight,
        "swap_layers": _layers(swap_layers),
        "plant_start": plant_start,
        "plant_ramp": plant_ramp,
        "init": init,
    }
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if layers is not None:
        changes["arch"] = replace(base.arch, layers=layers)
    changes["plant"] = _plant(base.plant, templates, suppressed, not_retrieved)
    if one_stage:
        changes["then"] = {}
    cfg = replace(base, seed=seed, save_every=save_every, **changes)
    summary = train(cfg, out, log=lambda line: console.print(line, highlight=False, soft_wrap=True))
    console.print(
        f"[green]Saved[/green] {out} ({summary['parameters']:,} parameters, "
        f"{summary['wall_seconds']:.0f}s). Evaluate: priorscope organism eval --model {out}"
    )


def organism_eval(
    model: str = typer.Option("builtin:organism", "--model", help="builtin:NAME or a folder."),
    n: int = typer.Option(1000, "--n", help="Held-out synthetic rows."),
    seed: int = typer.Option(7, "--seed", help="Synth seed of the held-out set."),
    prior_rate: float = typer.Option(0.8, "--prior-rate", help="Prior rate of the held-out set."),
    probes: bool = typer.Option(
        False, "--probes", help="Also probe the planted groups by layer (planted organisms)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the metrics here."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
) -> None:
    """Measure accuracy per template, clean and under total obfuscation.

    A checkpoint trained with planted groups (builtin:bottleneck) is evaluated on its own
    template cycle, with each group's rates; --probes adds the linear probes and the targets.

    Example: priorscope organism eval --model builtin:bottleneck --n 1000 --probes
    """
    from priorscope.engine.models import load_model
    from priorscope.engine.models.registry import resolve_path
    from priorscope.engine.training.evaluate import EvalConfig, evaluate, plant_of

    _threads(threads)
    folder, _ = resolve_path(model)
    plant = plant_of(folder)
    adapter = load_model(model)
    if probes:
        from priorscope.engine.training.planted import PlantedEvalConfig, measure_planted

        full = measure_planted(adapter, folder, PlantedEvalConfig(n=n, seed=seed))
        result = full["behaviour"]
    else:
        cfg = EvalConfig(n=n, seed=seed, prior_rate=prior_rate, plant=plant)
        full = result = evaluate(adapter, cfg)
    _print_eval(model, n, seed, result)
    for row in full.get("targets", []):
        mark = "[green]met[/green]" if row["met"] else "[red]NOT met[/red]"
        console.print(f"{row['target']}: {row['value']} {mark}", highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps(full, indent=2) + "\n")
        console.print(f"Wrote {json_out}")


def _print_eval(model: str, n: int, seed: int, result: dict[str, Any]) -> None:
    table = Table(title=f"{model} on synth (n={n}, seed={seed})")
    for col in ("template", "n", "clean acc", "total acc", "majority", "chance"):
        table.add_column(col)
    for template, row in result["per_template"].items():
        table.add_row(
            template,
            str(row["n"]),
            f"{row['clean_acc']:.3f}",
            f"{row['total_acc']:.3f}",
            f"{row['majority_rate']:.3f}",
            f"{row['chance_rate']:.3f}",
        )
    console.print(table)
    console.print(
        f"prior template, canonical answer under total: {result['prior_total_canonical_rate']:.3f}"
        f"\ncounter-prior clean items answered canonical: "
        f"{result['counter_prior_clean_canonical_rate']:.3f} (n={result['counter_prior_n']})"
    )
    planted = result.get("planted")
    if planted:
        console.print(f"planted groups: {json.dumps(planted)}", highlight=False, soft_wrap=True)


def model_info(
    name: str = typer.Argument("builtin:organism", help="builtin:NAME, a folder or a cached name."),
) -> None:
    """Print a model's family, layers, width and prompt template.

    Example: priorscope model info builtin:organism
    """
    from priorscope.engine.models import load_model

    info = load_model(name).describe()
    table = Table(title=name, show_header=False)
    for key in (
        "path",
        "family",
        "model_class",
        "num_layers",
        "d_model",
        "dtype",
        "weights_sha256",
        "image_token_id",
    ):
        table.add_row(key, str(info[key]))
    table.add_row("prompt_template", repr(info["prompt_template"]))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    organism = typer.Typer(
        help="Train and evaluate the built-in model organisms.", no_args_is_help=True
    )
    organism.command("train")(organism_train)
    organism.command("eval")(organism_eval)
    app.add_typer(organism, name="organism")
    model = typer.Typer(help="Inspect a VLM checkpoint.", no_args_is_help=True)
    model.command("info")(model_info)
    app.add_typer(model, name="model")
