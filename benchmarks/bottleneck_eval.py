"""Measure the bottleneck organism's planted groups and write its metrics and model card.

Usage (single-threaded, as every benchmark here):
    OMP_NUM_THREADS=1 python benchmarks/bottleneck_eval.py \
        --model engine/models/organism/bottleneck --n 2000 --card

Prints each issue-13 target with its measured value, writes ``metrics.json`` into the checkpoint
folder and ``benchmarks/results/bottleneck_eval.json``; with ``--card`` also renders the folder's
README.md (the model card) from the metrics and ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "engine/models/organism/bottleneck"


def _curve_table(probes: dict[str, Any]) -> str:
    """Return the markdown table of probe accuracy by layer, one row per (group, reduction)."""
    first = next(iter(probes.values()))["probe"]["last"]
    sites = list(first)
    lines = [
        "| group | site | " + " | ".join(sites) + " |",
        "|---|---|" + "---|" * len(sites),
    ]
    for group, result in probes.items():
        curves = dict(result["probe"])
        for reduction, curve in result.get("probe_tuned", {}).items():
            curves[f"{reduction} (tuned ridge)"] = curve
        for reduction, curve in curves.items():
            cells = " | ".join(f"{curve[s]:.2f}" for s in sites)
            lines.append(f"| {group} | {reduction} | {cells} |")
    return "\n".join(lines)


def _behaviour_table(planted: dict[str, Any]) -> str:
    lines = [
        "| group | template | n | clean acc | total acc | chance band |",
        "|---|---|---|---|---|---|",
    ]
    for template, row in planted["used"].items():
        lines.append(
            f"| used | {template} | {row['n']} | {row['clean_acc']:.3f} | "
            f"{row['total_acc']:.3f} | {row['chance_band']} |"
        )
    for name in ("prior", "suppressed"):
        row = planted[name]
        lines.append(
            f"| {name} | prior | {row['n']} | {row['clean_acc']:.3f} | "
            f"canonical {row['total_canonical_rate']:.3f} | |"
        )
    row = planted["not_retrieved"]
    lines.append(
        f"| not_retrieved | detail | {row['n']} | {row['clean_acc']:.3f} | | {row['chance_band']} |"
    )
    row = planted["control"]
    lines.append(f"| control | control | {row['n']} | {row['clean_acc']:.3f} | | |")
    return "\n".join(lines)


def _hide_erase_note(cfg: dict[str, Any]) -> str:
    """Return the card's sentence on the separate not-retrieved erasure ("" when it is off)."""
    weight = cfg.get("hide_erase_weight", 0.0)
    if not weight:
        return ""
    return (
        f"\n  The not-retrieved group's erasure also has a term of its own (weight {weight}, every"
        "\n  layer): sharing erase_weight with the suppressed group, the `last` probe still read the"
        "\n  triangle's colour at 0.17 to 0.32 (band top 0.16)."
    )


def _command(cfg: dict[str, Any], step: int | None = None) -> str:
    """Return the `priorscope organism train` command line that reproduces the checkpoint.

    ``step``: the checkpoint is the run's ``DIR/step-{step}`` folder (saved with --save-every).
    """
    from priorscope.engine.training.organism import BOTTLENECK

    preset = json.loads(json.dumps(BOTTLENECK.to_json()))
    line = f"priorscope organism train --out DIR --preset bottleneck --seed {cfg['seed']}"
    flags = {
        "steps": "--steps",
        "n_train": "--n-train",
        "lr": "--lr",
        "batch_size": "--batch-size",
        "hide_erase_weight": "--hide-erase-weight",
    }
    for key, flag in flags.items():
        if cfg.get(key) != preset[key]:
            line += f" {flag} {cfg.get(key)}"
    ignored = ("seed", "log_every", "save_every", *flags)
    same = all(cfg.get(k) == v for k, v in preset.items() if k not in ignored)
    note = "" if same else " (NOTE: other settings differ from the preset)"
    if step is not None:
        line += f" --save-every {cfg['save_every']}"
        return f"`{line}`{note}; the checkpoint is the folder `DIR/step-{step}` it writes"
    return f"`{line}`{note}"


def _capture_full(model: str, items: list[Any], store: Path) -> None:
    """Capture ``items`` (clean and total, full sequences at every layer) into ``store``."""
    from priorscope.engine.capture import CaptureConfig, capture
    from priorscope.engine.data.synth import write_tsv

    capture(
        CaptureConfig(
            model=model,
            data=str(write_tsv(items, store.with_suffix(".tsv"))),
            out=str(store),
            ladder=(),
            total=True,
            full_seq=len(items),
            full_seq_layers="all",
            batch_size=16,
            device="cpu",
            dtype="float32",
            hidden_dtype="float32",
            max_new_tokens=2,
            progress=False,
        )
    )


def measure_replacement(model: str, n: int, seed: int, work: Path) -> dict[str, Any]:
    """Return exact layer replacement (total <-> clean) of n used colour and n suppressed items.

    Per group: the share of items whose answer flips and the mean margin change (nats), by
    direction, position group, mode and layer (``embed`` first), as the validity test reads them.
    """
    import numpy as np

    from priorscope.engine.data.synth import SynthConfig, generate
    from priorscope.engine.patch import PatchConfig, patch
    from priorscope.engine.training.evaluate import plant_of
    from priorscope.engine.training.planted import PlantedEvalConfig, planted_sets

    plant = plant_of(model)
    pool = planted_sets(plant, PlantedEvalConfig(n=max(50, 2 * n), seed=seed))["suppressed"]
    sets = {
        "suppressed": [ex for ex in pool if ex.metadata["counter_prior"] == "1"][:n],
        "used": [
            ex
            for ex in generate(
                SynthConfig(
                    n=4 * n,
                    seed=seed + 1,
                    templates=("color",),
                    suppressed=plant.suppressed,
                    not_retrieved=plant.not_retrieved,
                )
            )
            if ex.metadata["planted"] == "used"
        ][:n],
    }
    out: dict[str, Any] = {}
    for name, items in sets.items():
        store = work / f"{name}.zarr"
        _capture_full(model, items, store)
        result = patch(store, PatchConfig(source="total", target="clean", model=model))
        flips = (result.exact["flipped"] == 1).mean(axis=1)  # [direction, layer, group, mode]
        delta = np.nanmean(result.exact["delta"], axis=1)
        out[name] = {
            "n": len(items),
            "seed": seed if name == "suppressed" else seed + 1,
            "layers": ["embed" if v == -1 else f"resid.{v}" for v in result.layers],
            "cells": {
                f"{d} {g} {m}": {
                    "flipped": [round(float(x), 3) for x in flips[di, :, gi, mi]],
                    "delta": [round(float(x), 3) for x in delta[di, :, gi, mi]],
                }
                for di, d in enumerate(result.direction_names)
                for gi, g in enumerate(result.groups)
                for mi, m in enumerate(result.modes)
            },
        }
    return out


def measure_injection(model: str, n: int, seed: int, work: Path) -> dict[str, Any]:
    """Return the read-out of the drawn colour after the clean answer-position state is put
    into the run without the image at each layer (n suppressed items, drawn colour uniform).

    The layer where the read-out falls after the patch is where the colour is suppressed
    (``priorscope.engine.patch.readout``); the validity test asserts the same on its own set.
    """
    from priorscope.engine.patch import patch, readout
    from priorscope.engine.patch.readout import localise_config
    from priorscope.engine.store import open_store
    from priorscope.engine.training.evaluate import plant_of
    from priorscope.engine.training.planted import PlantedEvalConfig, planted_sets

    items = planted_sets(plant_of(model), PlantedEvalConfig(n=n, seed=seed))["suppressed"]
    store = work / "inject.zarr"
    _capture_full(model, items, store)
    ro = readout(open_store(store), patch(store, localise_config(model=model)), "gold")
    out = ro.to_json()
    out["seed"] = seed
    out["loss_layer"] = {
        str(v): ro.loss_layer("clean->total", "last", "state", v) for v in ro.layers
    }
    return out


def _injection_section(metrics: dict[str, Any], cfg: dict[str, Any]) -> str:
    inj = metrics.get("injection")
    if not inj:
        return ""
    names = ["embed" if v == -1 else f"resid.{v}" for v in inj["kept_layers"]]
    lines = [
        "| patched at | " + " | ".join(names) + " | falls at |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for cond, row in inj["unpatched"].items():
        lines.append(f"| none ({cond}) | " + " | ".join(f"{a:.2f}" for a in row) + " | |")
    rows = inj["cells"]["clean->total last state"]
    for layer, row in zip(inj["layers"], rows, strict=True):
        cells = " | ".join(
            f"{a:.2f}" if v >= layer else "·" for v, a in zip(inj["kept_layers"], row, strict=True)
        )
        fall = inj["loss_layer"][str(layer)]
        name = "embed" if layer == -1 else f"resid.{layer}"
        lines.append(f"| {name} | {cells} | {'' if fall is None else f'resid.{fall}'} |")
    mid = cfg["readout_layer"]
    fall = inj["loss_layer"][str(mid)]
    planted = ", ".join(str(i) for i in cfg["suppress_layers"])
    return f"""
### Where the suppression happens (layer replacement and read-out)

Answer flips cannot place it: no suppressed answer moves. Instead, on {inj["n"]} suppressed items
(drawn colour uniform, seed {inj["seed"]}) the clean run's answer-position state at one layer is
put into the run without the image (`priorscope patch --source clean --target total --one-way
--groups last --mode state --readout gold`), and the drawn colour is read from the answer
position at every later layer (held-out accuracy of a linear probe, {inj["folds"]} folds grouped
by {inj["group_by"]}; majority class {inj["majority"]:.2f}). Put in at the read-out layer
`resid.{mid}`, the colour falls at **`resid.{fall}`** (planted suppression layers: {planted}); the
image is not needed for it to be removed.

{chr(10).join(lines)}
"""


def _replacement_table(replacement: dict[str, Any]) -> str:
    """Return the markdown table of answer flips by layer, one row per (group, cell)."""
    layers = next(iter(replacement.values()))["layers"]
    lines = [
        "| group | direction, positions, mode | " + " | ".join(layers) + " |",
        "|---|---|" + "---|" * len(layers),
    ]
    for group, result in replacement.items():
        for cell, row in result["cells"].items():
            flips = " | ".join(f"{v:.2f}" for v in row["flipped"])
            lines.append(f"| {group} | {cell} | {flips} |")
    return "\n".join(lines)


def _replacement_section(metrics: dict[str, Any]) -> str:
    replacement = metrics.get("replacement")
    if not replacement:
        return ""
    n = next(iter(replacement.values()))["n"]
    seeds = "/".join(str(r["seed"]) for r in replacement.values())
    return f"""
### Layer replacement

Exact suffix replay (`priorscope.engine.patch`, source `total` into target `clean` and back) on
{n} suppressed counter-prior items and {n} used `color` items (seeds {seeds}): the share of items whose answer
flips when one layer's state (`state`) or write (`write`) at the image, question-text or answer
(`last`) positions is replaced by the other run's. A used item's answer follows the image states
it is given; a suppressed item's answer follows none: the drawn colour that the probes read at
the read-out layer has no causal path to the answer.

{_replacement_table(replacement)}
"""


def _step_note(training: dict[str, Any]) -> str:
    if training.get("step") is None:
        return ""
    return (
        f".\n  Taken at step {training['step']} of the {training['config']['steps']}-step schedule (the"
        " lr had not yet decayed to its floor); wall and CPU time above are up to that step."
    )


def _second_stage(training: dict[str, Any]) -> str:
    """Return the card's bullet on a second training stage ("" for one stage)."""
    stages = training.get("stages")
    if not stages:
        return ""
    first, second = stages
    cfg, then = second["config"], training["config"]["then"]
    swap = ""
    if cfg.get("swap_weight", 0.0):
        layers = ", ".join(str(i) for i in cfg["swap_layers"])
        swap = (
            f"; a swap loss (weight {cfg['swap_weight']}, layer(s) {layers}): a suppressed row's"
            "\n  answer logits must not move when it exchanges that layer's answer-position write"
            "\n  with its recoloured twin's and the layers above are replayed (without it, a fine-tune"
            "\n  that erased the leak left the suppression to layer 6's write alone: replacing that"
            "\n  write moved the suppressed answers' margin by 1.08 logits)"
        )
    frozen = " The vision tower stays fixed." if cfg.get("vision_lr_scale", 1.0) == 0 else ""
    attn = ""
    if cfg.get("hide_attn_weight", 0.0):
        layers = ", ".join(str(i) for i in cfg["hide_attn_layers"]) or "every layer"
        keys = (
            "any image token" if cfg.get("hide_attn_to") == "image" else "its shape's image token"
        )
        attn = (
            f"\n  An attention loss (weight {cfg['hide_attn_weight']}, {layers}): the text positions of a"
            f"\n  not-retrieved row (question and answer position) may pay no attention to {keys},"
            "\n  read from eager attention as -log(1 - mass) per head and position. An attention"
            "\n  read-out of the first stage found the colour's route: one layer-0 head of a text"
            "\n  position sat wholly on the shape's token, and the answer position put whole heads on it"
            "\n  at layers 5 to 7; erasing the states alone, with the tower fixed, left 0.18 to 0.32 at"
            "\n  the answer position, and keeping the text from the shape's token alone left 0.15 to"
            "\n  0.18 (the other image tokens hold its colour too)."
        )
    erase = ""
    if "erase_weight" in then:
        erase = f" The linear erasure's weight is {cfg['erase_weight']} (first stage {first['config']['erase_weight']})."
    changed = ", ".join(f"{k} {then[k]}" for k in sorted(then))
    return (
        f"\n- Second stage (the preset's `then`: {changed}), from the first stage's weights:"
        f"\n  {cfg['steps']} steps at peak lr {cfg['lr']} with every planted loss at full weight from its first"
        f"\n  step; the not-retrieved erasure term (weight {cfg.get('hide_erase_weight', 0.0)}, every layer) removes"
        f"\n  the lone shape's colour that the first stage left at the later layers' answer position"
        f"\n  (0.32 at resid.6 with C = 1, 0.45 with the tuned ridge){swap}.{frozen}{erase}{attn}"
        f"\n  First stage: wall"
        f"\n  {first['wall_seconds'] / 60:.1f} min, CPU {first['cpu_seconds'] / 60:.1f} min; second: wall {second['wall_seconds'] / 60:.1f} min, CPU"
        f"\n  {second['cpu_seconds'] / 60:.1f} min; both: CPU {training['cpu_seconds'] / 60:.1f} min."
    )


def _card(metrics: dict[str, Any], training: dict[str, Any]) -> str:
    cfg = training["config"]
    stages = training.get("stages") or [training]
    arch, plant = cfg["arch"], cfg["plant"]
    planted = metrics["behaviour"]["planted"]
    last = f"resid.{arch['layers'] - 1}"
    mid = f"resid.{cfg['readout_layer']}"
    targets = "\n".join(
        f"- {t['target']}: **{t['value']}** ({'met' if t['met'] else 'NOT met'})"
        for t in metrics["targets"]
    )
    ev = metrics["eval"]
    suppress_layers = ", ".join(str(i) for i in cfg["suppress_layers"])
    return f"""# priorscope bottleneck organism

A tiny `Qwen2_5_VLForConditionalGeneration` ({training["parameters"]:,} parameters) trained from
scratch by priorscope on its synthetic benchmark with three planted item groups (issue 13), so
that probes and layer replacement can be checked against a known answer. Text decoder:
{arch["layers"]} layers, d_model {arch["d_model"]}, {arch["heads"]} heads; vision tower
{arch["vision_depth"]} layers of width {arch["vision_width"]}; {arch["image_size"]} x {arch["image_size"]} pixels = {(arch["image_size"] // 28) ** 2} image tokens; word-level tokenizer
(every answer is one token). Load it with `priorscope.engine.models.load_model("builtin:bottleneck")`.

## Planted groups (the synth `planted` column)

Generate its items with `SynthConfig(..., templates={tuple(plant["templates"])},
suppressed={tuple(plant["suppressed"])}, not_retrieved={tuple(plant["not_retrieved"])})`.

- **used**: `color`, `count`, `presence` rows. The answer follows the image; without it, chance.
- **prior**: prior rows of {", ".join(o for o in ("banana", "strawberry", "carrot", "leaf", "grape", "blueberry") if o not in plant["suppressed"])}: the image when visible,
  the canonical colour without it (as `builtin:organism`).
- **suppressed**: prior rows of {", ".join(plant["suppressed"])}. Always answered with the canonical
  colour. The drawn colour is moved to the answer position by layer {cfg["readout_layer"]} (`{mid}`, a training
  read-out asked for it there) and removed again by layers {suppress_layers} (their text-position
  states were trained not to change when the object is recoloured, and their answer position
  against a linear probe of it).
- **not_retrieved**: `detail` rows, "what color is the {plant["not_retrieved"][0]}?" about a lone
  {"/".join(plant["not_retrieved"])}. The image tokens carry its colour (scene loss); no text position of any
  layer was allowed to change when it is recoloured, and the answer was trained on a uniformly
  drawn colour, so it is answered at chance.
- **control**: text-only facts.

## Measured (held-out, n = {ev["n"]} per set, seeds {ev["seed"]}/{ev["seed"] + 1}/{ev["seed"] + 2})

Answers: greedy answer token; `total` shows each image as its mean colour. The chance band of
a rate is [uniform rate − 3 SE, majority rate + 3 SE] of the set's gold answers: where any
answer that ignores the image falls.

{_behaviour_table(planted)}

Suppressed counter-prior items (clean) answered canonical: {planted["suppressed"]["counter_clean_canonical_rate"]:.3f}
(behaviour set, n={planted["suppressed"]["counter_n"]}); probe set:
{metrics["probes"]["suppressed"]["counter_clean_canonical_rate"]:.3f} (n={metrics["probes"]["suppressed"]["counter_n"]}). Clean and total answers agree on
{planted["suppressed"]["clean_equals_total_rate"]:.3f} of suppressed items.

Linear probes (standardised logistic regression, C={ev["probe_c"]}, stratified {ev["folds"]}-fold
cross-validated accuracy) of the drawn colour, by layer (`embed` = input of layer 0). Suppressed
items are drawn in a uniform colour for this set (the canonical one is right 1 time in 8). The
`last (tuned ridge)` rows read the same states with a less regularised probe (ridge
classifiers, strength chosen per fold on an inner fold from 0.01 to 1000): a colour left in
directions where the states hardly vary shows there when C = {ev["probe_c"]} misses it.

{_curve_table(metrics["probes"])}

### Issue-13 targets

{targets}

The suppressed drop is measured from `{mid}` to `{last}`.
{_replacement_section(metrics)}{_injection_section(metrics, cfg)}
## Training

- {cfg["n_train"]} synth rows (`seed 1000003 + seed`, the template cycle above, prior_rate
  {cfg["prior_rate"]}, suppressed objects drawn canonical {plant["suppressed_prior_rate"]} of the time),
  {cfg["uninformative_rate"]} of them with an uninformative image and an answer drawn from the
  question's prior; every informative suppressed / not_retrieved row has a recoloured twin in the
  same batch.
- Losses: answer tokens; scene loss (weight {cfg["aux_weight"]}) on the merged image tokens;
  binding loss (weight {cfg["binding_weight"]}) at the question word of layer {cfg["binding_layer"]}; drawn-colour read-out
  (weight {cfg["readout_weight"]}) at the answer position of layer {cfg["readout_layer"]}; suppressed invariance (weight
  {cfg["suppress_weight"]}) at layers {suppress_layers}; not-retrieved invariance (weight {cfg["hide_weight"]}) at every layer;
  linear erasure (weight {cfg.get("erase_weight", 0.0)}): the same twin difference at the answer position of
  those layers, measured in the metric a linear probe uses: the inverse within-colour
  covariance of the current model's states, refitted every {cfg.get("erase_refresh", 50)} steps on a fixed bank of
  {cfg.get("erase_bank", 192)} planted rows per group and their twins; the loss is log(1 + Mahalanobis length). The
  plain invariance alone brought the change to 0.1% of the batch variance and a fresh probe
  still read the colour at 0.99; metrics averaged over training batches were stale (they held
  the model's drift between steps) or rank-deficient, and a fresh probe read 0.98.{_hide_erase_note(cfg)}
- Schedule: the invariance and erasure losses start at step {cfg.get("plant_start", 0)} and reach full weight
  {cfg.get("plant_ramp", 0)} steps later. On from the first step they kept any colour from reaching the answer
  position; on from step 1,000, count stayed at chance through step 4,000. None of these
  read-outs is part of the checkpoint.
- AdamW, peak lr {cfg["lr"]}, {cfg["warmup"]} warm-up steps then cosine to 5%, batch {cfg["batch_size"]} (+ twins),
  {cfg["steps"]} steps; seed {cfg["seed"]}; wall time {stages[0]["wall_seconds"] / 60:.1f} min, CPU time
  {stages[0].get("cpu_seconds", float("nan")) / 60:.1f} min on {training["torch_threads"]} torch thread(s) (2-core CPU shared with other jobs).{_second_stage(training)}
- Command: {_command(cfg, training.get("step"))}{_step_note(training)}

Measurement command: `OMP_NUM_THREADS=1 python benchmarks/bottleneck_eval.py --n {ev["n"]} --card`
({metrics["eval_seconds"]:.0f} s).
"""


def main() -> None:
    import torch

    from priorscope.engine.models import load_model
    from priorscope.engine.training.planted import PlantedEvalConfig, measure_planted

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--card", action="store_true", help="Also write the model card README.md.")
    parser.add_argument(
        "--patch", type=int, default=32, help="Items per group for layer replacement (0: skip)."
    )
    parser.add_argument(
        "--inject",
        type=int,
        default=400,
        help="Suppressed items for the replacement read-out (with --patch).",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    metrics = measure_planted(
        load_model(args.model), args.model, PlantedEvalConfig(n=args.n, seed=args.seed)
    )
    if args.patch:
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            metrics["replacement"] = measure_replacement(
                args.model, args.patch, args.seed + 3, Path(work)
            )
            metrics["injection"] = measure_injection(
                args.model, args.inject, args.seed + 5, Path(work)
            )
    metrics["eval_seconds"] = round(time.time() - start, 1)
    metrics["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    metrics["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(_curve_table(metrics["probes"]))
    for row in metrics["targets"]:
        print(f"{'met    ' if row['met'] else 'NOT met'}  {row['target']}: {row['value']}")
    if "replacement" in metrics:
        print(_replacement_table(metrics["replacement"]))
        print(
            _injection_section(
                metrics, json.loads((Path(args.model) / "training.json").read_text())["config"]
            )
        )
    folder = Path(args.model)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if folder.resolve() == Path(DEFAULT).resolve():
        # Only the shipped checkpoint's figures are the benchmark's record.
        results = REPO / "benchmarks/results"
        results.mkdir(parents=True, exist_ok=True)
        (results / "bottleneck_eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if args.card:
        training = json.loads((folder / "training.json").read_text())
        (folder / "README.md").write_text(_card(metrics, training))


if __name__ == "__main__":
    main()
