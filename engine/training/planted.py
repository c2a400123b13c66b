"""Measure the planted groups of an organism: answers and linear probes by layer (issue 13).

Hidden states are read through :func:`priorscope.engine.models.sites.hooks` at ``embed`` and
every ``resid.{i}``, reduced as capture reduces them (``last``: the answer position;
``image_mean`` / ``text_mean``: the mean over image / question-text positions). A probe is a
standardised multinomial logistic regression scored by stratified 5-fold cross-validation, so
each accuracy is measured on items the probe did not see.

- ``suppressed``: prior items of the suppressed objects, drawn in a uniformly chosen colour;
  the probe target is the drawn colour (the canonical colour, what the answer gives, is right
  1 time in 8).
- ``not_retrieved``: ``detail`` items (a lone shape in a uniform colour); target its colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from priorscope.engine.errors import UsageError
from priorscope.engine.training.data import PlantSpec
from priorscope.engine.training.evaluate import (
    EvalConfig,
    chance_band,
    evaluate,
    in_band,
    plant_of,
    predict,
    training_config,
)

REDUCTIONS = ("last", "image_mean", "text_mean")


@dataclass(frozen=True)
class PlantedEvalConfig:
    """Sizes and seeds of the held-out sets (each set has its own seed, none used in training)."""

    n: int = 2000
    seed: int = 7
    batch_size: int = 64
    folds: int = 5
    probe_c: float = 1.0  # inverse L2 strength of the logistic-regression probes

    def __post_init__(self) -> None:
        if self.n < 50 or self.folds < 2 or self.probe_c <= 0:
            raise UsageError(
                f"Expected n >= 50, folds >= 2 and probe_c > 0. Got n={self.n}, "
                f"folds={self.folds}, probe_c={self.probe_c}."
            )


def hidden_reductions(
    adapter: Any, examples: Sequence[Any], batch_size: int = 64
) -> dict[str, Any]:
    """Return reduction -> float32 array [n, 1 + layers, d_model] (``embed`` first)."""
    import numpy as np
    import torch

    from priorscope.engine.models.base import TOKEN_IMAGE, TOKEN_TEXT
    from priorscope.engine.models.sites import hooks, site_name
    from priorscope.kernels.reduce import reduce_sites

    sites = [site_name(layer) for layer in range(-1, adapter.num_layers)]
    chunks: list[Any] = []
    seen: dict[str, Any] = {}
    reads = {site: _keep(seen, site) for site in sites}
    with hooks(adapter, reads=reads, prefill_only=True) as session:
        for start in range(0, len(examples), batch_size):
            part = examples[start : start + batch_size]
            batch = adapter.encode(part, [ex.image for ex in part])
            kinds = adapter.token_kinds(batch)
            session.arm()
            with torch.no_grad():
                adapter.model(**batch, use_cache=False)
            reduced = [
                reduce_sites(
                    seen[s], kinds, REDUCTIONS, image_kind=TOKEN_IMAGE, text_kind=TOKEN_TEXT
                )
                for s in sites
            ]
            chunks.append(torch.stack(reduced, dim=1).numpy())  # [b, site, reduction, d]
    states = np.concatenate(chunks)
    return {name: states[:, :, r] for r, name in enumerate(REDUCTIONS)}


def _keep(seen: dict[str, Any], site: str) -> Any:
    def read(tensor: Any) -> None:
        seen[site] = tensor.detach()

    return read


def probe_accuracy(features: Any, labels: Sequence[str], folds: int = 5, c: float = 1.0) -> float:
    """Return the cross-validated accuracy of a linear probe of ``labels`` from ``features``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    predicted = cross_val_predict(probe, np.asarray(features, dtype=np.float64), y, cv=split)
    return round(float((predicted == y).mean()), 4)


def probe_curves(
    states: dict[str, Any], labels: Sequence[str], cfg: PlantedEvalConfig, sites: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Return reduction -> {site: probe accuracy} for every layer (``sites`` names the layers)."""
    return {
        name: {
            site: probe_accuracy(array[:, j], labels, cfg.folds, cfg.probe_c)
            for j, site in enumerate(sites)
        }
        for name, array in states.items()
    }


def tuned_curve(
    states: Any, labels: Sequence[str], cfg: PlantedEvalConfig, sites: Sequence[str]
) -> dict[str, float]:
    """Return {site: held-out accuracy} of ridge classifiers whose strength is chosen per fold
    on an inner fold (:func:`priorscope.engine.patch.readout.held_out_accuracy`).

    A second, less regularised reader than the fixed-C logistic probe: a colour left in
    directions where the states hardly vary is read here when C = 1 misses it.
    """
    import numpy as np

    from priorscope.engine.patch.readout import held_out_accuracy

    classes = sorted(set(labels))
    y = np.array([classes.index(v) for v in labels], dtype=np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    fold = np.empty(len(y), dtype=np.int8)
    fold[order] = np.arange(len(y)) % cfg.folds
    return {
        site: round(held_out_accuracy(states[:, j].astype(np.float64), y, fold, len(classes)), 4)
        for j, site in enumerate(sites)
    }


def _probe_set(adapter: Any, examples: list[Any], cfg: PlantedEvalConfig) -> dict[str, Any]:
    """Return the answers, chance band and probe curves of one planted group's items."""
    from priorscope.engine.models.sites import site_name

    gold = [ex.answers[0] for ex in examples]
    canon = [ex.metadata.get("canonical", "") for ex in examples]
    answers = predict(adapter, examples, [ex.image for ex in examples], cfg.batch_size)
    sites = [site_name(layer) for layer in range(-1, adapter.num_layers)]
    states = hidden_reductions(adapter, examples, cfg.batch_size)
    band = chance_band(gold)
    acc = round(sum(a == g for a, g in zip(answers, gold, strict=True)) / len(gold), 4)
    counter = [i for i, ex in enumerate(examples) if ex.metadata.get("counter_prior") == "1"]
    return {
        "n": len(examples),
        "clean_acc": acc,
        **band,
        "answer_in_chance_band": in_band(acc, band),
        "counter_n": len(counter),
        "counter_clean_canonical_rate": round(
            sum(answers[i] == canon[i] for i in counter) / max(1, len(counter)), 4
        ),
        "probe": probe_curves(states, gold, cfg, sites),
        "probe_tuned": {"last": tuned_curve(states["last"], gold, cfg, sites)},
    }


def planted_sets(plant: PlantSpec, cfg: PlantedEvalConfig) -> dict[str, list[Any]]:
    """Return the held-out probe sets: ``suppressed`` and ``not_retrieved`` items (n each)."""
    from priorscope.engine.data.synth import SynthConfig, generate

    out: dict[str, list[Any]] = {}
    if plant.suppressed:
        # Prior rows pick any of six objects; draw enough to keep n of the suppressed ones.
        share = len(plant.suppressed) / 6
        pool = generate(
            SynthConfig(
                n=int(cfg.n / share * 1.15) + 20,
                seed=cfg.seed + 1,
                templates=("prior",),
                suppressed=plant.suppressed,
                not_retrieved=plant.not_retrieved,
                suppressed_prior_rate=1 / 8,  # drawn colour uniform: the probe's classes balance
            )
        )
        out["suppressed"] = [ex for ex in pool if ex.metadata["planted"] == "suppressed"][: cfg.n]
    if plant.not_retrieved:
        detail = SynthConfig(
            n=cfg.n,
            seed=cfg.seed + 2,
            templates=("detail",),
            not_retrieved=plant.not_retrieved,
        )
        out["not_retrieved"] = generate(detail)
    return out


def measure_planted(adapter: Any, folder: str, cfg: PlantedEvalConfig) -> dict[str, Any]:
    """Return the behaviour metrics, probe curves and issue-13 targets of a planted organism."""
    plant = plant_of(folder)
    if not plant.active:
        raise UsageError(
            f"Expected a checkpoint trained with planted groups. Got {folder}, whose "
            "training.json names none. Use builtin:bottleneck or a --preset bottleneck run."
        )
    behaviour = evaluate(
        adapter, EvalConfig(n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, plant=plant)
    )
    probes = {
        name: _probe_set(adapter, items, cfg) for name, items in planted_sets(plant, cfg).items()
    }
    config = training_config(folder) or {}
    result = {"behaviour": behaviour, "probes": probes, "eval": {**vars(cfg)}}
    result["targets"] = targets(result, config, adapter.num_layers)
    return result


def targets(
    result: dict[str, Any], config: dict[str, Any], num_layers: int
) -> list[dict[str, Any]]:
    """Return each issue-13 target: name, measured value(s) and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, met: bool) -> None:
        out.append({"target": name, "value": value, "met": bool(met)})

    used = result["behaviour"]["planted"]["used"]
    for template, row in used.items():
        add(f"used/{template}: clean acc >= 0.95", row["clean_acc"], row["clean_acc"] >= 0.95)
        add(
            f"used/{template}: total acc in chance band {row['chance_band']}",
            row["total_acc"],
            row["total_in_chance_band"],
        )
    probes = result["probes"]
    if "suppressed" in probes:
        sup = probes["suppressed"]
        mid = f"resid.{config.get('readout_layer', num_layers // 2)}"
        last = f"resid.{num_layers - 1}"
        curve = sup["probe"]["last"]
        rate = sup["counter_clean_canonical_rate"]
        add("suppressed: counter-prior items answered canonical (clean) >= 0.9", rate, rate >= 0.9)
        add(f"suppressed: probe last@{mid} >= 0.9", curve[mid], curve[mid] >= 0.9)
        drop = round(curve[mid] - curve[last], 4)
        add(f"suppressed: probe last drops {mid} -> {last} by >= 0.3", drop, drop >= 0.3)
        tuned = sup.get("probe_tuned", {}).get("last")
        if tuned:
            drop = round(tuned[mid] - tuned[last], 4)
            add(
                f"suppressed: tuned ridge probe last drops {mid} -> {last} by >= 0.3",
                drop,
                drop >= 0.3,
            )
    if "not_retrieved" in probes:
        hid = probes["not_retrieved"]
        band = hid["chance_band"]
        add(
            f"not_retrieved: answer acc in chance band {band}",
            hid["clean_acc"],
            hid["answer_in_chance_band"],
        )
        curve = hid["probe"]["last"]
        worst = max(curve.values())
        add(
            f"not_retrieved: probe last in chance band {band} at every layer",
            worst,
            all(in_band(v, hid) for v in curve.values()),
        )
        tuned = hid.get("probe_tuned", {}).get("last")
        if tuned:
            add(
                f"not_retrieved: tuned ridge probe last in chance band {band} at every layer",
                max(tuned.values()),
                all(in_band(v, hid) for v in tuned.values()),
            )
        best = max(hid["probe"]["image_mean"].values())
        add("not_retrieved: probe image_mean >= 0.9 at some layer", best, best >= 0.9)
    return out
