"""Commands of the model group: ``priorscope organism train|eval`` and ``priorscope model info``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from priorscope.engine.errors import UsageError
from priorscope.engine.models.organism.train import TrainConfig

console = Console()
_DEFAULTS = TrainConfig()


def _threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise UsageError(f"Expected --threads >= 1. Got {threads}.")
    torch.set_num_threads(threads)


def organism_train(
    out: Path = typer.Option(..., "--out", help="Folder to write the checkpoint to."),
    seed: int = typer.Option(0, "--seed", help="Seed for data, mix and initialisation."),
    steps: int = typer.Option(_DEFAULTS.steps, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(_DEFAULTS.lr, "--lr", help="Peak learning rate (AdamW, cosine)."),
    batch_size: int = typer.Option(_DEFAULTS.batch_size, "--batch-size", help="Rows per step."),
    n_train: int = typer.Option(_DEFAULTS.n_train, "--n-train", help="Synthetic training rows."),
    uninformative_rate: float = typer.Option(
        _DEFAULTS.uninformative_rate,
        "--uninformative-rate",
        help="Fraction of rows whose image carries no evidence.",
    ),
    aux_weight: float = typer.Option(
        _DEFAULTS.aux_weight,
        "--aux-weight",
        help="Weight of the per-image-token scene loss on the vision tower (0: off).",
    ),
    binding_weight: float = typer.Option(
        _DEFAULTS.binding_weight,
        "--binding-weight",
        help="Weight of the answer read-out at the question word in a middle layer (0: off).",
    ),
    vision_freeze_steps: int = typer.Option(
        _DEFAULTS.vision_freeze_steps,
        "--vision-freeze-steps",
        help="Steps the vision tower stays at its random init.",
    ),
    vision_lr_scale: float = typer.Option(
        _DEFAULTS.vision_lr_scale,
        "--vision-lr-scale",
        help="Vision tower lr multiplier; 0 freezes it at random init.",
    ),
    save_every: int = typer.Option(
        0, "--save-every", help="Also save DIR/step-N every this many steps (0: only at the end)."
    ),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
) -> None:
    """Train the model organism (a tiny Qwen2.5-VL) on synthetic data from scratch.

    The defaults reproduce the shipped checkpoint.

    Example: priorscope organism train --out organism_ckpt --seed 0
    """
    from priorscope.engine.models.organism.train import train

    _threads(threads)
    cfg = replace(
        _DEFAULTS,
        seed=seed,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        n_train=n_train,
        uninformative_rate=uninformative_rate,
        aux_weight=aux_weight,
        binding_weight=binding_weight,
        save_every=save_every,
        vision_lr_scale=vision_lr_scale,
        vision_freeze_steps=vision_freeze_steps,
    )
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
    json_out: Path | None = typer.Option(None, "--json", help="Write the metrics here."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
) -> None:
    """Measure accuracy per template, clean and under total obfuscation.

    Example: priorscope organism eval --model builtin:organism --n 1000 --json metrics.json
    """
    from priorscope.engine.models import load_model
    from priorscope.engine.models.organism.evaluate import EvalConfig, evaluate

    _threads(threads)
    result = evaluate(load_model(model), EvalConfig(n=n, seed=seed, prior_rate=prior_rate))
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
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"Wrote {json_out}")


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
        help="Train and evaluate the built-in model organism.", no_args_is_help=True
    )
    organism.command("train")(organism_train)
    organism.command("eval")(organism_eval)
    app.add_typer(organism, name="organism")
    model = typer.Typer(help="Inspect a VLM checkpoint.", no_args_is_help=True)
    model.command("info")(model_info)
    app.add_typer(model, name="model")
