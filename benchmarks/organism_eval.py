"""Measure a model organism checkpoint and write its metrics (and model card) beside it.

Usage (single-threaded, as every benchmark here):
    OMP_NUM_THREADS=1 python benchmarks/organism_eval.py --model engine/models/organism/checkpoint \
        --n 2000 --card

Prints the per-template table, writes ``metrics.json`` into the checkpoint folder and
``benchmarks/results/organism_eval.json``; with ``--card`` also renders the checkpoint's README.md
(the model card) from the metrics and the checkpoint's ``training.json``.
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


def _table(metrics: dict[str, Any]) -> str:
    lines = [
        "| template | n | clean acc | total acc | majority rate | chance rate |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in metrics["per_template"].items():
        lines.append(
            f"| {name} | {row['n']} | {row['clean_acc']:.3f} | {row['total_acc']:.3f} "
            f"| {row['majority_rate']:.3f} | {row['chance_rate']:.3f} |"
        )
    return "\n".join(lines)


def _vision_text(cfg: dict[str, Any]) -> str:
    """Return the card's lines on the auxiliary losses and the vision tower."""
    arch = cfg["arch"]
    lines = []
    if cfg.get("aux_weight", 0) > 0:
        lines.append(
            f"- Scene loss (weight {cfg['aux_weight']}): a linear read-out of every merged image "
            "token names the\n  item drawn under it (kind and colour, or nothing) and how many "
            "items of that kind the\n  image holds. It stands in for a real VLM's vision "
            "pre-training: through the answer loss\n  alone the tower never learned shape."
        )
    if cfg.get("binding_weight", 0) > 0:
        lines.append(
            f"- Binding loss (weight {cfg['binding_weight']}): a linear read-out of decoder layer "
            f"{cfg['binding_layer']}'s output at the\n  question's shape or object word must give "
            "the answer. Without it, after 4,000 steps held-out count was\n  0.40 and presence "
            "0.77, even with a vision tower that named every item.\n  By construction the "
            "answer is linearly readable at that word from that layer on: probes will\n  find it "
            "there because it was trained to be there."
        )
    if lines:
        lines.append(
            "- Both read-outs exist only in training and are not part of the checkpoint; the "
            "answer comes\n  from the model's own LM head."
        )
    freeze = cfg["vision_freeze_steps"]
    when = f"frozen for the first {freeze} steps, then " if freeze else ""
    lines.append(
        f"- Vision tower: {when}trained at {cfg['vision_lr_scale']} x the learning rate.\n"
        f"  Pixels are normalised around the synth background grey (`{arch['normalize']}`: mean "
        "236/255,\n  std 0.3) so that empty patches are near zero."
    )
    return "\n".join(lines)


def _command(cfg: dict[str, Any]) -> str:
    """Return the `priorscope organism train` command line that reproduces the checkpoint."""
    from priorscope.engine.training.organism import TrainConfig

    # Through JSON, as training.json was written (tuples become lists).
    defaults = json.loads(json.dumps(TrainConfig().to_json()))
    flags = {
        "steps": "--steps",
        "lr": "--lr",
        "batch_size": "--batch-size",
        "n_train": "--n-train",
        "uninformative_rate": "--uninformative-rate",
        "aux_weight": "--aux-weight",
        "binding_weight": "--binding-weight",
        "vision_freeze_steps": "--vision-freeze-steps",
        "vision_lr_scale": "--vision-lr-scale",
    }
    line = f"priorscope organism train --out DIR --seed {cfg['seed']}"
    for key, flag in flags.items():
        if cfg.get(key) != defaults[key]:
            line += f" {flag} {cfg.get(key)}"
    ignored = ("seed", "log_every", "save_every")
    # A key missing from an older training.json predates its option: the run used the default.
    same = all(cfg.get(k, v) == v for k, v in defaults.items() if k not in ignored)
    return f"`{line}`" + (" (the defaults are this checkpoint's settings)" if same else "")


def _ignorance(metrics: dict[str, Any]) -> str:
    """Return the card's sentence on what the counter-prior rate says about the organism."""
    rate = metrics["counter_prior_clean_canonical_rate"]
    if rate <= 0.05:
        return (
            "With a clean image it reads the object's colour and\n  ignores the prior; the prior "
            "shows only when the image carries no evidence (total\n  obfuscation, heavy blur)."
        )
    return "This is the organism's own visual ignorance: the number\n  later diagnostics must find."


def _shortfall(targets: list[tuple[str, bool]]) -> str:
    """Return the card's line on which issue-4 targets this checkpoint misses."""
    missed = [name for name, ok in targets if not ok]
    if not missed:
        return "All issue-4 targets are met on this held-out set."
    return "Not reached: " + "; ".join(missed) + "."


def _card(metrics: dict[str, Any], training: dict[str, Any]) -> str:
    cfg = training["config"]
    arch = cfg["arch"]
    per = metrics["per_template"]
    targets = [
        ("clean acc color >= 0.9", per["color"]["clean_acc"] >= 0.9),
        ("clean acc presence >= 0.9", per["presence"]["clean_acc"] >= 0.9),
        ("clean acc count >= 0.8", per["count"]["clean_acc"] >= 0.8),
        ("prior canonical rate under total >= 0.9", metrics["prior_total_canonical_rate"] >= 0.9),
    ]
    met = "\n".join(f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in targets)
    ev = metrics["eval"]
    return f"""# priorscope model organism

A tiny `Qwen2_5_VLForConditionalGeneration` ({training["parameters"]:,} parameters) trained from
scratch by priorscope on its synthetic benchmark, with a language prior planted on purpose.
Text decoder: {arch["layers"]} layers, d_model {arch["d_model"]}, {arch["heads"]} heads. Vision tower: {arch["vision_depth"]} layers of width
{arch["vision_width"]}. Images: {arch["image_size"]} x {arch["image_size"]} pixels = {(arch["image_size"] // 28) ** 2} image tokens. Word-level tokenizer over the
synth vocabulary; every answer is one token. Load it with
`priorscope.engine.models.load_model("builtin:organism")` (no network).

## Measured accuracy (held-out synth set: n={ev["n"]}, seed={ev["seed"]}, prior_rate={ev["prior_rate"]})

Greedy answer at the answer position. `total` shows each image as its per-channel mean colour;
that mean still leans towards the colour of the shapes (one to three on a grey background), so a
colour question can stay above its majority rate under `total` without any visual reading of
shapes. Majority and chance rates are those of the gold answers of this set.

{_table(metrics)}

- Prior template, canonical answer under total obfuscation: **{metrics["prior_total_canonical_rate"]:.3f}**
- Counter-prior items (prior object drawn in another colour), clean image: answered with the
  canonical colour **{metrics["counter_prior_clean_canonical_rate"]:.3f}** of the time, correct
  {metrics["counter_prior_clean_acc"]:.3f} (n={metrics["counter_prior_n"]}). {_ignorance(metrics)}
- Overall clean accuracy: {metrics["overall_clean_acc"]:.3f}

Targets of issue 4:
{met}

## Training

- Data: {cfg["n_train"]} synth rows (`SynthConfig(seed=1000003 + seed, prior_rate={cfg["prior_rate"]})`,
  all five templates, open-ended questions only) drawn at {cfg.get("render_size", 112)} x {cfg.get("render_size", 112)} and resized to
  {arch["image_size"]} x {arch["image_size"]} as the processor does, rendered and preprocessed once.
- Mix: a fraction {cfg["uninformative_rate"]} of rows get an uninformative image (half the image's
  mean colour, half the plain synth background) and an answer drawn from the prior distribution
  of their question (the answers of informative rows with the same template, and the same
  object for the prior template); control rows keep their answer. The rest are ordinary
  informative rows, including counter-prior items at rate {1 - cfg["prior_rate"]:.2f}.
- Loss: cross-entropy on the answer token and the closing `<|im_end|>`, plus the auxiliary
  losses below.
{_vision_text(cfg)}
- Optimiser: AdamW, peak lr {cfg["lr"]}, {cfg["warmup"]} warm-up steps then cosine to 5%, weight
  decay {cfg["weight_decay"]}, batch {cfg["batch_size"]}, {cfg["steps"]} steps, gradient clip 1.0.
- Seed {cfg["seed"]}; wall time {training["wall_seconds"] / 60:.1f} min with
  {training["torch_threads"]} torch thread(s) on a 2-core CPU shared with other jobs; final loss
  {training["final_loss"]:.4f}.
- Command: {_command(cfg)}

{_shortfall(targets)}

Evaluation command: `OMP_NUM_THREADS=1 python benchmarks/organism_eval.py --model DIR --n {ev["n"]}`.
"""


def main() -> None:
    import torch

    from priorscope.engine.models import load_model
    from priorscope.engine.training.evaluate import EvalConfig, evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "engine/models/organism/checkpoint"))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--card", action="store_true", help="Also write the model card README.md.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    metrics = evaluate(load_model(args.model), EvalConfig(n=args.n, seed=args.seed))
    metrics["eval_seconds"] = round(time.time() - start, 1)
    metrics["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    metrics["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(_table(metrics))
    for key in (
        "prior_total_canonical_rate",
        "counter_prior_clean_canonical_rate",
        "counter_prior_clean_acc",
        "overall_clean_acc",
        "eval_seconds",
    ):
        print(f"{key}: {metrics[key]}")
    folder = Path(args.model)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    results = REPO / "benchmarks/results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "organism_eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if args.card:
        training = json.loads((folder / "training.json").read_text())
        (folder / "README.md").write_text(_card(metrics, training))


if __name__ == "__main__":
    main()
