"""The main job: a held-out synthetic benchmark, the built-in organism captured on it, its decay
metrics, the report, and sentences a reader checks against the planted ground truth.

The synthetic set is generated with a seed the organism never trained on (training uses seeds
from 1_000_003 up, the model card's evaluation seed 7) and, by default, with a prior rate the
organism was not trained with, so the findings test what the diagnostics recover rather than
what the training data said.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.analysis.decay import DecayConfig
from priorscope.engine.conditions import DEFAULT_LADDER
from priorscope.engine.errors import ConfigMismatchError, UsageError
from priorscope.engine.store import Store, open_store

VISUAL_TEMPLATES = ("color", "count", "presence")
ORGANISM = "builtin:organism"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates and captures (validated on construction)."""

    out: Path = Path("priorscope_demo")
    n: int = 1000
    seed: int = 20261128
    prior_rate: float = 0.6
    size: int = 112
    ladder: tuple[float, ...] = DEFAULT_LADDER
    batch_size: int = 32
    n_boot: int = 1000
    model: str = ORGANISM
    layers: str = "all"

    def __post_init__(self) -> None:
        if not 10 <= self.n <= 100_000:
            raise UsageError(f"Expected n (--n) between 10 and 100000. Got {self.n} instead.")
        if not 0.0 <= self.prior_rate <= 1.0:
            raise UsageError(
                f"Expected prior_rate (--prior-rate) in [0, 1]. Got {self.prior_rate} instead."
            )
        if 1_000_003 <= self.seed < 1_000_003 + 1000 or self.seed == 7:
            raise UsageError(
                f"Expected a held-out seed. Got {self.seed}, which the organism's training or "
                "model card uses. Pick another --seed."
            )
        object.__setattr__(self, "out", Path(self.out))


@dataclass(frozen=True)
class DemoResult:
    """Paths the demo wrote, the report, the planted-truth numbers and sentences."""

    dataset: Path
    store: Path
    grounded: Path
    report: Any  # priorscope.engine.report.ReportResult
    truth: dict[str, Any]
    sentences: tuple[str, ...]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def _trained_size(model: str, default: int) -> int:
    """Return the image side the model's processor expects (its pixel budget), else default.

    The organism was trained at one image size; synthetic images of that size keep the demo
    on the distribution it knows, and processors of other models resize anyway.
    """
    if model == ORGANISM:
        from importlib.resources import files

        folder = Path(str(files("priorscope.engine.models.organism").joinpath("checkpoint")))
    else:
        folder = Path(model)
    for name in ("processor_config.json", "preprocessor_config.json"):
        try:
            doc = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        size = doc.get("image_processor", doc).get("size", {})
        if isinstance(size, dict) and "longest_edge" in size:
            return round(math.sqrt(float(size["longest_edge"])))
    return default


def run_demo(config: DemoConfig, *, console: Any = None) -> DemoResult:
    """Return the demo's outputs after generating, capturing, analysing and reporting.

    Everything is written under ``config.out``; the demo's store there is resumed when the
    settings are unchanged and rewritten when they differ.
    """
    from priorscope.engine.analysis.export import export_grounded
    from priorscope.engine.capture import CaptureConfig, capture
    from priorscope.engine.data.synth import SynthConfig, generate, write_tsv
    from priorscope.engine.report import ReportConfig, write_report

    start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    size = _trained_size(config.model, config.size)
    examples = generate(
        SynthConfig(n=config.n, seed=config.seed, size=size, prior_rate=config.prior_rate)
    )
    dataset = write_tsv(examples, out / "heldout_synth.tsv")
    timings["generate"] = time.perf_counter() - start

    store = out / "organism.zarr"
    t = time.perf_counter()
    capture_cfg = CaptureConfig(
        model=config.model,
        data=str(dataset),
        out=str(store),
        ladder=config.ladder,
        total=True,
        none=True,
        layers=config.layers,
        batch_size=config.batch_size,
        device="cpu",
        max_new_tokens=4,
        progress=console is not None,
    )
    try:
        capture(capture_cfg)  # an unchanged rerun resumes: committed examples are skipped
    except ConfigMismatchError:
        # The store is the demo's own, written by an earlier demo with other settings.
        shutil.rmtree(store)
        capture(capture_cfg)
    timings["capture"] = time.perf_counter() - t

    t = time.perf_counter()
    opened = open_store(store)
    truth = planted_truth(opened, config.prior_rate)
    sentences = truth_sentences(truth)
    grounded = export_grounded(opened, out / "grounded_subset.tsv").out
    report = write_report(
        opened,
        out / "report.html",
        ReportConfig(
            decay=DecayConfig(by="category", n_boot=config.n_boot),
            title="priorscope demo: the built-in organism on a held-out synthetic benchmark",
            findings=sentences,
        ),
    )
    timings["analyse"] = time.perf_counter() - t
    (out / "demo_truth.json").write_text(json.dumps(truth, indent=1, allow_nan=False))
    return DemoResult(
        dataset, store, grounded, report, truth, sentences, time.perf_counter() - start, timings
    )


def _rate(mask: np.ndarray) -> float | None:
    """Return the mean of a boolean mask, None when it is empty."""
    return float(mask.mean()) if mask.size else None


def planted_truth(store: Store | str | Path, prior_rate: float) -> dict[str, Any]:
    """Return per-template measured rates next to what was planted in the synthetic set.

    For each template: n, accuracy at every condition, the chance (1 / distinct gold answers,
    decay's definition for open-ended items) and majority rate of its golds, and the
    blind-answerable rate (right under the most severe blur and total). For the prior template
    also the share of canonical answers under total, and clean/total accuracy on the
    counter-prior items.
    """
    from priorscope.engine.analysis.decay import blind_answerable, resolve_levels

    snap = open_store(store).snapshot()
    tables = snap.examples()
    answer = snap.outputs("answer")
    score = snap.outputs("score").astype(np.float64)
    lv = resolve_levels(tables.conditions)
    correct = score >= 0.5
    blind = blind_answerable(correct, lv.severe, lv.total)
    template = np.array([m.get("template", "") for m in tables.metadata])
    out: dict[str, Any] = {"prior_rate": prior_rate, "conditions": list(lv.names), "templates": {}}
    for name in sorted(set(template.tolist())):
        idx = np.flatnonzero(template == name)
        golds = [tables.gold[i][0] if tables.gold[i] else "" for i in idx]
        counts = {g: golds.count(g) for g in set(golds)}
        out["templates"][name] = {
            "n": len(idx),
            "accuracy": {c: float(score[idx, k].mean()) for k, c in enumerate(lv.names)},
            "chance": 1.0 / max(1, len(counts)),
            "majority_rate": max(counts.values()) / len(idx),
            "blind_answerable": _rate(blind[idx]),
        }
    prior = np.flatnonzero(template == "prior")
    if prior.size and lv.total is not None:
        canon = np.array([tables.metadata[i].get("canonical", "") for i in prior])
        counter = np.array([tables.metadata[i].get("counter_prior") == "1" for i in prior])
        total_ans = answer[prior, lv.total]
        out["prior"] = {
            "n": int(prior.size),
            "measured_canonical_share": float(np.mean(~counter)),
            "total_canonical_rate": float(np.mean(total_ans == canon)),
            "counter_prior_n": int(counter.sum()),
            "counter_prior_clean_acc": _rate(correct[prior[counter], lv.clean]),
            "counter_prior_total_acc": _rate(correct[prior[counter], lv.total]),
        }
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def truth_sentences(truth: dict[str, Any]) -> tuple[str, ...]:
    """Return plain sentences that put each measured rate next to the planted truth."""
    t = truth["templates"]
    names = truth["conditions"]
    total = "total" if "total" in names else names[-1]
    lines = []
    if "prior" in t and "prior" in truth:
        p, pt = truth["prior"], t["prior"]
        lines.append(
            f"prior template: {_pct(pt['accuracy'][total])} answerable under total obfuscation "
            f"({_pct(pt['blind_answerable'])} blind-answerable); planted prior rate "
            f"{truth['prior_rate']:g} ({_pct(p['measured_canonical_share'])} of these items "
            f"drawn in their canonical colour). Under total the organism names the canonical "
            f"colour on {_pct(p['total_canonical_rate'])} of prior items."
        )
        lines.append(
            f"counter-prior items ({p['counter_prior_n']}, drawn in an unusual colour): "
            f"{_pct(p['counter_prior_clean_acc'])} right on the clean image, "
            f"{_pct(p['counter_prior_total_acc'])} under total obfuscation."
        )
    for name in VISUAL_TEMPLATES:
        if name in t:
            v = t[name]
            lines.append(
                f"{name} template (needs the image): clean {_pct(v['accuracy']['clean'])}, "
                f"total obfuscation {_pct(v['accuracy'][total])}; planted chance "
                f"{_pct(v['chance'])}, majority answer {_pct(v['majority_rate'])}."
            )
    if "control" in t:
        accs = [t["control"]["accuracy"][c] for c in names]
        span = (
            _pct(min(accs))
            if _pct(min(accs)) == _pct(max(accs))
            else f"between {_pct(min(accs))} and {_pct(max(accs))}"
        )
        lines.append(
            f"control template (planted to be answerable from the text alone): accuracy "
            f"{span} at every level, total obfuscation and no image included."
        )
    return tuple(lines)
