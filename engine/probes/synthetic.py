"""A capture store with class signal planted where we choose: the ground truth probes are checked on.

Hidden states are structured random data like a residual stream's: a large constant offset
(residual streams carry a few huge mean directions), a low-rank background shared across
examples, isotropic noise, and, only at the chosen (layer, reduction, condition) places, a
low-rank class signal: the example's gold class mapped through a random ``rank``-dimensional
subspace. Probes should find the gold class there and sit at chance everywhere else.

The store is written through ``engine/store``'s own writer (create_store, ShardWriter), so it
is a real store exactly like a capture's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.conditions import Condition, parse_condition
from priorscope.engine.store import BatchRows, ShardWriter, StoreLayout, create_store
from priorscope.engine.store.dtypes import float32_to_bf16_bits
from priorscope.engine.store.layout import open_for_capture, rank_shards


@dataclass(frozen=True)
class PlantedStore:
    """What to plant: ``signal[(layer, reduction, condition)]`` = scale of the gold signal.

    ``targets`` adds metadata columns with labels of their own (name -> classes), planted by
    ``signal[(name, layer, reduction, condition)]``; ``control_types`` > 0 adds a Hewitt & Liang
    control column ``control`` (a random label per question type, ``control_types`` types).
    """

    n: int = 400
    d_model: int = 32
    layers: tuple[int, ...] = (-1, 0, 1, 2)
    reductions: tuple[str, ...] = ("last", "image_mean")
    conditions: tuple[str, ...] = ("clean", "total")
    n_classes: int = 4
    rank: int = 4
    signal: Mapping[tuple[Any, ...], float] = field(default_factory=dict)
    targets: Mapping[str, int] = field(default_factory=dict)
    control_types: int = 0
    seed: int = 0
    hidden_dtype: str = "float32"
    shard_examples: int = 64
    images_per_group: int = 1  # > 1: consecutive examples share an image hash
    offset: float = 20.0
    background_rank: int = 8


def _layout(cfg: PlantedStore) -> StoreLayout:
    return StoreLayout(
        n_examples=cfg.n,
        conditions=cfg.conditions,
        layers=cfg.layers,
        reductions=cfg.reductions,
        d_model=cfg.d_model,
        candidates=(),
        hidden_dtype=cfg.hidden_dtype,
        shard_examples=cfg.shard_examples,
    )


def planted_labels(cfg: PlantedStore) -> dict[str, np.ndarray]:
    """Return the class index [n] of every planted target ('gold' and ``cfg.targets``)."""
    rng = np.random.default_rng([cfg.seed, 0])
    out = {"gold": rng.integers(0, cfg.n_classes, cfg.n)}
    for i, (name, k) in enumerate(sorted(cfg.targets.items())):
        out[name] = np.random.default_rng([cfg.seed, 3, i]).integers(0, k, cfg.n)
    return out


def _columns(cfg: PlantedStore, labels: dict[str, np.ndarray]) -> dict[str, list]:
    n, gold = cfg.n, labels["gold"]
    rng = np.random.default_rng([cfg.seed, 4])
    template = rng.choice(["color", "count", "shape"], size=n)
    types = np.arange(n) % cfg.control_types if cfg.control_types else np.arange(n) % 7
    control = rng.integers(0, cfg.n_classes, max(cfg.control_types, 1))
    meta = []
    for i in range(n):
        m = {"template": str(template[i]), "image_sha256": f"img{i // cfg.images_per_group}"}
        m.update({name: f"{name}{labels[name][i]}" for name in cfg.targets})
        if cfg.control_types:
            m["control"] = f"k{control[types[i]]}"
        meta.append(m)
    return {
        "id": [f"ex{i}" for i in range(n)],
        "question": [f"question {template[i]} {types[i]}" for i in range(n)],
        "gold": [json.dumps([f"c{g}"]) for g in gold],
        "metadata": [json.dumps(m) for m in meta],
        "category": [str(t) for t in template],
        "source_row": list(range(n)),
    }


def planted_hidden(cfg: PlantedStore, labels: dict[str, np.ndarray], rows: slice) -> np.ndarray:
    """Return hidden states [rows, condition, layer, reduction, d_model] float32 of ``rows``.

    Every value is drawn from a generator seeded by (seed, row), so any row range is the
    same whichever batch writes it.
    """
    rng0 = np.random.default_rng([cfg.seed, 1])
    d = cfg.d_model
    offset = np.zeros(d, dtype=np.float32)
    offset[: max(1, d // 64)] = cfg.offset
    background = rng0.standard_normal((cfg.background_rank, d)).astype(np.float32) * 2.0
    directions = {}
    for i, name in enumerate(["gold", *sorted(cfg.targets)]):
        k = cfg.n_classes if name == "gold" else cfg.targets[name]
        g = np.random.default_rng([cfg.seed, 5, i])
        basis = g.standard_normal((cfg.rank, d)).astype(np.float32) / np.sqrt(cfg.rank)
        directions[name] = g.standard_normal((k, cfg.rank)).astype(np.float32) @ basis  # [k, d]
    places = []
    for key, scale in cfg.signal.items():
        name, (layer, red, cond) = ("gold", key) if len(key) == 3 else (key[0], key[1:])
        at = (cfg.conditions.index(cond), cfg.layers.index(layer), cfg.reductions.index(red))
        places.append((name, at, scale))
    shape = (len(cfg.conditions), len(cfg.layers), len(cfg.reductions), d)
    out = np.empty((rows.stop - rows.start, *shape), dtype=np.float32)
    for i, e in enumerate(range(rows.start, rows.stop)):
        rng = np.random.default_rng([cfg.seed, 2, e])
        coeff = rng.standard_normal((*shape[:3], cfg.background_rank)).astype(np.float32)
        out[i] = offset + coeff @ background + rng.standard_normal(shape).astype(np.float32)
        for name, (c, li, r), scale in places:
            out[i, c, li, r] += scale * directions[name][labels[name][e]]
    return out


def write_planted_store(path: str | Path, cfg: PlantedStore, batch: int = 256) -> Path:
    """Return ``path`` after writing a complete store with the planted signal of ``cfg``."""
    labels = planted_labels(cfg)
    gold = labels["gold"]
    layout = _layout(cfg)
    conds: list[Condition] = [parse_condition(c) for c in cfg.conditions]
    attrs = {
        "conditions": [c.to_json() for c in conds],
        "config": {"planted": True, "seed": cfg.seed},
        "model": {
            "path": "(planted)",
            "family": "synthetic",
            "num_layers": max(cfg.layers) + 1,
            "d_model": cfg.d_model,
        },
        "dataset": {"files": [], "sha256": [], "count": cfg.n, "format": "planted"},
    }
    create_store(
        path,
        layout,
        attrs,
        _columns(cfg, labels),
        np.zeros((1, cfg.d_model), np.float32),
        {"kind": "rmsnorm", "eps": 1e-6, "weight": np.ones(cfg.d_model)},
    )
    group = open_for_capture(path)
    writer = ShardWriter(group, layout, rank_shards(layout.n_shards, 0, 1), max_pending=2)
    c = len(cfg.conditions)
    # The model "answers" the gold class under clean and a fixed guess elsewhere.
    for start in range(0, cfg.n, batch):
        rows = slice(start, min(start + batch, cfg.n))
        b = rows.stop - rows.start
        hidden = planted_hidden(cfg, labels, rows)
        answer = np.empty((b, c), dtype=object)
        for k, cond in enumerate(cfg.conditions):
            answer[:, k] = [f"c{g}" if cond == "clean" else "c0" for g in gold[rows]]
        score = answer == np.array([f"c{g}" for g in gold[rows]], dtype=object)[:, None]
        writer.put(
            BatchRows(
                indices=np.arange(rows.start, rows.stop),
                raw=answer,
                answer=answer,
                extracted=np.ones((b, c), bool),
                score=score.astype(np.float32),
                cand_logprob=np.zeros((b, c, 1), np.float32),
                hidden=_storage(hidden, cfg.hidden_dtype),
            )
        )
    writer.close()
    return Path(path)


def _storage(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return float32_to_bf16_bits(values)
    return values.astype(dtype)
