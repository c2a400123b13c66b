"""Commands ``priorscope capture``, ``priorscope store info`` and ``priorscope store verify``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from priorscope.cli.data import ANSWER_IS_INDEX, DUPLICATE_IDS, METRIC, MISSING_IMAGE, YES_NO_01

console = Console()


def _capture(
    model: str = typer.Option(
        "builtin:organism", "--model", help="Checkpoint folder, cached hub name or builtin:NAME."
    ),
    data: Path = typer.Option(..., "--data", help="Benchmark file (TSV, parquet or JSONL)."),
    out: str = typer.Option(
        ..., "--out", help="Store folder (STORE.zarr); an existing one is resumed."
    ),
    ladder: str = typer.Option(
        "0.005,0.01,0.02,0.04,0.08,0.16", help="Blur sigmas as fractions of the short side."
    ),
    total: bool = typer.Option(True, "--total/--no-total", help="Add the mean-colour condition."),
    none: bool = typer.Option(False, "--none", help="Add the no-image condition."),
    sites: str = typer.Option("last,image_mean,text_mean", help="Site reductions to keep."),
    layers: str = typer.Option(
        "all", help="all, 0,4,8 or start:stop:step (embed = input of layer 0)."
    ),
    full_seq: int = typer.Option(
        0, "--full-seq", help="Keep full-sequence residuals of the first N examples."
    ),
    full_seq_layers: str = typer.Option(
        "all", "--full-seq-layers", help="Layers of the full-sequence residuals."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per forward pass."),
    device: str = typer.Option("auto", help="cuda, cpu or auto."),
    dtype: str = typer.Option("auto", help="Compute dtype: bf16, fp16, fp32 or auto."),
    hidden_dtype: str = typer.Option(
        "auto", "--hidden-dtype", help="Stored dtype of hidden states (auto = compute dtype)."
    ),
    max_new_tokens: int = typer.Option(
        16, "--max-new-tokens", help="Bound on the generated answer."
    ),
    shard: str = typer.Option(
        None, "--shard", help="i/n: capture only this rank's shards (default RANK/WORLD_SIZE)."
    ),
    limit: int = typer.Option(None, "--limit", help="Capture only the first N examples."),
    shard_examples: int = typer.Option(
        0, "--shard-examples", help="Examples per store shard (power of two; 0 = about 64 MiB)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    grad: bool = typer.Option(
        False, "--grad", help="Also store margin gradients (for patch --estimate)."
    ),
    answer_is_index: bool | None = ANSWER_IS_INDEX,
    yes_no_01: bool | None = YES_NO_01,
    duplicate_ids: str = DUPLICATE_IDS,
    missing_image: str = MISSING_IMAGE,
    metric: str = METRIC,
    scorer: str = typer.Option(
        "priorscope",
        "--scorer",
        help="How replies are read and scored: priorscope, or vlmevalkit (VLMEvalKit's "
        "rule-based extraction, quirks included, for numbers comparable with it).",
    ),
    answer_from: str = typer.Option(
        "generate",
        "--answer-from",
        help="generate: greedy decoding; candidates: an example whose candidate answers are "
        "single tokens (multiple choice, yes/no, the benchmark's answer vocabulary) is answered "
        "by its most likely candidate at the prefill, with no decoding; others still generate.",
    ),
    attn: str = typer.Option(
        "auto",
        "--attn",
        help="Attention: auto (flash-attention 2 on an Ampere-or-later GPU in bf16/fp16 when "
        "flash-attn is installed, else sdpa), sdpa, eager or flash_attention_2.",
    ),
    preprocess: str = typer.Option(
        "auto",
        "--preprocess",
        help="Where condition images are resized, normalised and cut into patches: host (the "
        "image processor), device (on the model's device from the blur on; Qwen2-VL family, "
        "bitwise equal to host) or auto (device on a GPU where the model allows it).",
    ),
    on_bad: str = typer.Option(
        "error",
        "--on-bad",
        help="error: stop at the first bad row or image; skip: leave it out (load time) or "
        "record it as skipped in the store (decode time) and go on.",
    ),
) -> None:
    """Run the model on every example and condition and stream states and answers into a store.

    Example: priorscope capture --model builtin:organism --data bench.tsv --out run.zarr --none
    """
    from priorscope.engine.capture import CaptureConfig, capture, parse_shard
    from priorscope.engine.conditions import parse_ladder, parse_reductions
    from priorscope.engine.store import verify

    cfg = CaptureConfig(
        model=model,
        data=str(data),
        out=str(out),
        ladder=tuple(parse_ladder(ladder)),
        total=total,
        none=none,
        reductions=tuple(parse_reductions(sites)),
        layers=layers,
        full_seq=full_seq,
        full_seq_layers=full_seq_layers,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        hidden_dtype=hidden_dtype,
        max_new_tokens=max_new_tokens,
        shard=parse_shard(shard),
        limit=limit,
        shard_examples=shard_examples,
        progress=progress,
        grad=grad,
        scorer=scorer,
        answer_from=answer_from,
        attn=attn,
        preprocess=preprocess,
        data_options=data_options(
            answer_is_index, yes_no_01, duplicate_ids, missing_image, metric, on_bad
        ),
    )
    path = capture(cfg)
    report = verify(path)
    state = "complete" if report.ok else f"{report.n_committed}/{report.n_examples} committed"
    console.print(f"Store {path}: {state}.")
    _print_skipped(report.skipped)


def _print_skipped(lines: list[str], limit: int = 10) -> None:
    """Name the examples capture skipped (count, then 'row id: reason' for the first few)."""
    if not lines:
        return
    console.print(
        f"[yellow]Skipped examples: {len(lines)}[/yellow] (--on-bad skip; analyses leave them "
        "out; 'priorscope store info --json' lists them all):",
        highlight=False,
    )
    for line in lines[:limit]:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def data_options(
    answer_is_index: bool | None,
    yes_no_01: bool | None,
    duplicate_ids: str,
    missing_image: str,
    metric: str,
    on_bad: str = "error",
) -> dict[str, object]:
    """Return the data-loading flags that differ from their defaults (as ``data check`` takes them).

    Only the set ones are recorded, so a store captured without them keeps its identity.
    """
    given = {
        "answer_is_index": answer_is_index,
        "yes_no_01": yes_no_01,
        "duplicate_ids": duplicate_ids,
        "missing_image": missing_image,
        "metric": metric,
        "on_bad": on_bad,
    }
    defaults = {
        "duplicate_ids": "auto",
        "missing_image": "auto",
        "metric": "auto",
        "on_bad": "error",
    }
    return {k: v for k, v in given.items() if v is not None and v != defaults.get(k)}


def _info(
    store: str = typer.Argument(..., help="Store folder or URL (s3://bucket/x.zarr)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print what a store holds: model, data, conditions, layers, arrays and progress.

    Example: priorscope store info synth.zarr --json
    """
    from priorscope.engine.store import info

    summary = info(store)
    if as_json:
        console.print_json(json.dumps(summary, default=str))
        return
    table = Table(title=f"{store}", show_header=False)
    model = summary["model"]
    rows = [
        (
            "model",
            f"{model.get('path')} ({model.get('family')}, {model.get('num_layers')} layers, d={model.get('d_model')})",
        ),
        (
            "dataset",
            f"{summary['dataset'].get('files')} ({summary['dataset'].get('count')} examples)",
        ),
        ("committed", f"{summary['committed']} / {summary['examples']}"),
        ("skipped", f"{summary['skipped']} (--on-bad skip: committed without values)"),
        ("conditions", ", ".join(summary["conditions"])),
        ("layers", ", ".join(str(v) for v in summary["layers"])),
        ("reductions", ", ".join(summary["reductions"])),
        ("candidates", ", ".join(summary["candidates"][:20])),
        ("hidden", f"{summary['hidden_dtype']}, {summary['shard_examples']} examples per shard"),
        ("full sequences", str(summary["fullseq_examples"])),
        ("text-only", f"{summary['text_only_examples']} (captured under 'none' only)"),
        ("size on disk", f"{summary['disk_bytes'] / 1e6:.1f} MB"),
        ("created", str(summary["created"])),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    arrays = Table()
    for column in ("array", "dims", "shape", "dtype", "chunks"):
        arrays.add_column(column, no_wrap=True)
    for name, meta in sorted(summary["arrays"].items()):
        arrays.add_row(
            name,
            ",".join(meta["dims"]),
            str(tuple(meta["shape"])),
            meta["dtype"],
            str(tuple(meta["chunks"])),
        )
    console.print(arrays)


def _verify(
    store: str = typer.Argument(..., help="Store folder or URL (s3://bucket/x.zarr)."),
    deep: bool = typer.Option(
        False, "--deep", help="Also read every hidden state and check it is finite."
    ),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="First remove leftovers of killed writers (*.partial, .NAME.zarr.creating-*).",
    ),
) -> None:
    """Check that every example is committed and the arrays match the schema; exit 1 if not."""
    from priorscope.engine.errors import StoreError
    from priorscope.engine.store import verify
    from priorscope.engine.store.verify import remove_leftovers

    for removed in remove_leftovers(store) if repair else []:
        console.print(f"removed {removed}")
    report = verify(store, deep=deep)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if not report.ok:
        raise StoreError(
            f"Expected a complete, consistent store at {store}. Got: "
            + "; ".join(report.problems)
            + "."
        )
    skipped = f", {len(report.skipped)} of them skipped" if report.skipped else ""
    console.print(f"Store {store} is complete: {report.n_committed} examples committed{skipped}.")
    _print_skipped(report.skipped)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("capture")(_capture)
    store_app = typer.Typer(help="Inspect and check capture stores.", no_args_is_help=True)
    store_app.command("info")(_info)
    store_app.command("verify")(_verify)
    app.add_typer(store_app, name="store")
