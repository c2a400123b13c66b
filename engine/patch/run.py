"""``patch(store, PatchConfig)`` and ``lens(store)``: the entries the CLI and Python users call.

Exact cells come from suffix replay of the full-sequence examples (:mod:`.replay`), estimates
from gradients captured with ``--grad`` (:mod:`.estimate`); results go to a results store
through :func:`priorscope.engine.store.open_results`, never to Zarr directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from priorscope.engine.errors import StoreError, UsageError
from priorscope.engine.patch.config import PatchConfig
from priorscope.engine.patch.estimate import (
    Agreement,
    GradientSource,
    compare,
    full_sequence_estimates,
    group_masks,
    last_token_estimates,
)
from priorscope.engine.patch.lens import LensResult, logit_lens, renormalise, rowwise_error
from priorscope.engine.patch.replay import (
    WRITE,
    Patch,
    PositionGroup,
    Replayer,
    ReplayInput,
    replay_patches,
)
from priorscope.engine.patch.targets import Targets, margins, store_targets

if TYPE_CHECKING:
    from priorscope.engine.models.base import VLMAdapter
    from priorscope.engine.store import Store


@dataclass
class PatchResult:
    """Everything :func:`patch` computed (arrays as in :mod:`.schema`), plus the agreement.

    Exact arrays are [direction, example, layer, group, mode] over ``rows`` (the patched full-
    sequence examples) and ``layers``; estimate arrays [source, target, est_example, est_layer,
    group, mode] over ``est_rows``, ``est_layers`` and the store's conditions. ``kept`` (with
    ``PatchConfig.keep``) adds the answer-position states at ``kept_layers`` after each cell.
    """

    config: PatchConfig
    directions: tuple[tuple[str, str], ...]
    groups: tuple[str, ...]
    modes: tuple[str, ...]
    candidates: tuple[str, ...]
    conditions: tuple[str, ...]
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    layers: tuple[int, ...] = ()
    kept_layers: tuple[int, ...] = ()
    gold: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prior: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    exact: dict[str, np.ndarray] = field(default_factory=dict)
    est_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    est_layers: tuple[int, ...] = ()
    estimate: dict[str, np.ndarray] = field(default_factory=dict)
    agreement: dict[str, Agreement] = field(default_factory=dict)
    top_cells: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None

    @property
    def direction_names(self) -> list[str]:
        return [f"{s}->{t}" for s, t in self.directions]


# --------------------------------------------------------------------------- cells and inputs

# The largest ``kept`` array patch holds in memory (bytes).
KEEP_LIMIT = 4 << 30


def patch_layers(store: Store, spec: str, mode_write: bool) -> tuple[int, ...]:
    """Return the store layers ``spec`` selects among the full-sequence layers, or raise."""
    from priorscope.engine.models.sites import parse_site, residual_sites

    n = int(store.model_ref.get("num_layers", max(store.layers) + 1))
    fs = _fullseq_layers(store)
    if spec.strip() == "all":
        wanted = list(fs)
    else:
        wanted = [parse_site(s, n).store_layer for s in residual_sites(spec, n)]
    missing = [v for v in wanted if v not in fs]
    if missing:
        raise UsageError(
            f"Expected --layers among the full-sequence layers {list(fs)} of {store.path}. Got "
            f"{missing}. Capture with --full-seq-layers covering them."
        )
    if mode_write:
        no_prev = [v for v in wanted if v != -1 and v - 1 not in fs]
        if no_prev:
            raise UsageError(
                f"Expected the layer before each patched layer in the full sequences for "
                f"--mode write (it swaps h_L - h_(L-1)). Got none for layers {no_prev} (stored: "
                f"{list(fs)}). Use --mode state or capture with --full-seq-layers all."
            )
    return tuple(wanted)


def kept_layers(store: Store, spec: str, patched: tuple[int, ...]) -> tuple[int, ...]:
    """Return the layers ``--keep`` selects (ascending), or raise naming the ones it cannot keep.

    ``final`` is the last decoder layer, ``all`` every full-sequence layer and the last one,
    anything else a list or range as ``--layers``. A kept layer below a patched layer is read
    from the store's full sequences, so it must be one of them.
    """
    from priorscope.engine.models.sites import parse_site, residual_sites

    spec = spec.strip()
    if not spec:
        return ()
    n = int(store.model_ref.get("num_layers", max(store.layers) + 1))
    fs = _fullseq_layers(store)
    if spec == "final":
        wanted = [n - 1]
    elif spec == "all":
        wanted = [*fs, n - 1]
    else:
        wanted = [parse_site(s, n).store_layer for s in residual_sites(spec, n)]
    top = max(patched, default=-1)
    missing = sorted({v for v in wanted if v not in fs and v < top})
    if missing:
        raise UsageError(
            f"Expected --keep layers among the full-sequence layers {list(fs)} of {store.path} "
            f"or above every patched layer (the highest is {top}). Got {missing}: below a "
            "patched layer the unpatched state is read from the store. Capture with "
            "--full-seq-layers covering them, or keep 'final'."
        )
    return tuple(sorted(set(wanted)))


def _fullseq_layers(store: Store) -> tuple[int, ...]:
    examples = store.fullseq_examples()
    if not examples:
        raise StoreError(
            f"Expected full-sequence residuals in {store.path} for exact replay. Got none. "
            "Capture with --full-seq N, or use --estimate."
        )
    return tuple(store.fullseq(examples[0]).layers)


def fullseq_rows(store: Store, limit: int | None) -> np.ndarray:
    """Return the committed full-sequence store rows to patch (the first ``limit``)."""
    committed = store.committed()
    rows = [e for e in store.fullseq_examples() if committed[e]]
    if not rows:
        raise StoreError(
            f"Expected committed full-sequence examples in {store.path}. Got none yet. Wait "
            "for the capture, or capture with --full-seq N."
        )
    return np.asarray(rows[:limit] if limit else rows, dtype=np.int64)


def replay_input(
    store: Store,
    example: int,
    label: str,
    last: dict[tuple[str, int], np.ndarray],
    pos: int | None = None,
) -> ReplayInput:
    """Return the replay inputs of store row ``example`` (states of every fs condition/layer).

    ``last[(condition, layer)]`` [visible row, d] supplies answer-position states of conditions
    without full sequences (e.g. ``none``), for last-token patches; ``pos`` is the example's
    index among the visible rows (looked up when not given).
    """
    fs = store.fullseq(example)
    states = {
        (c, v): fs.values[:, ci, vi]
        for ci, c in enumerate(fs.conditions)
        for vi, v in enumerate(fs.layers)
    }
    if last and pos is None:
        pos = int(np.searchsorted(store.rows(), example))
    extra = {key: values[pos] for key, values in last.items()}
    return ReplayInput(example, label, fs.kind, fs.input_ids, fs.position_ids, states, extra)


def _last_states(
    store: Store, conditions: set[str], layers: tuple[int, ...]
) -> dict[tuple[str, int], np.ndarray]:
    """Return answer-position states [row, d] of conditions that have no full sequences."""
    fs_conds = set(store.fullseq(store.fullseq_examples()[0]).conditions)
    out = {}
    needed = {v for v in layers} | {v - 1 for v in layers if v != -1}
    for cond in sorted(conditions - fs_conds):
        for v in sorted(needed & set(store.layers)):
            out[(cond, v)] = store.hidden(layer=v, condition=cond, reduction="last")
    return out


def _cells(
    cfg: PatchConfig, rows: np.ndarray, layers: tuple[int, ...], inputs: dict[int, ReplayInput]
) -> list[tuple[tuple[int, int, int, int, int], Patch]]:
    """Return (index into the result arrays, Patch) of every cell to replay (empty groups out)."""
    out = []
    for di, (src, tgt) in enumerate(cfg.directions):
        for ei, row in enumerate(rows):
            if int(row) not in inputs:
                continue
            kind = inputs[int(row)].kind
            for gi, group in enumerate(cfg.position_groups):
                if not group.mask(kind).any():
                    continue
                for li, layer in enumerate(layers):
                    for mi, mode in enumerate(cfg.modes):
                        out.append(
                            ((di, ei, li, gi, mi), Patch(int(row), layer, group, mode, src, tgt))
                        )
    return out


# --------------------------------------------------------------------------- exact


def _check_conditions(store: Store, cfg: PatchConfig) -> None:
    for name in {cfg.source, cfg.target}:
        if name not in store.condition_names:
            from priorscope.engine.errors import did_you_mean

            raise did_you_mean(name, store.condition_names, "condition of this store")


def run_exact(
    store: Store, cfg: PatchConfig, adapter: VLMAdapter, targets: Targets, result: PatchResult
) -> None:
    """Fill ``result.exact`` by suffix replay of every cell, a block of examples at a time."""
    layers = patch_layers(store, cfg.layers, WRITE in cfg.modes)
    rows = fullseq_rows(store, cfg.examples)
    visible = store.rows()
    at = np.searchsorted(visible, rows)
    result.rows, result.layers = rows, layers
    result.kept_layers = kept_layers(store, cfg.keep, layers)
    result.gold, result.prior = targets.gold[at], targets.prior[at]
    shape = (len(cfg.directions), len(rows), len(layers), len(cfg.groups), len(cfg.modes))
    k = len(store.candidates)
    ex = {
        "logprob": np.full((*shape, k), np.nan, np.float32),
        "replay_check": np.full(shape[:3], np.nan, np.float32),
    }
    cand_ids = adapter.candidate_token_ids(store.candidates)
    replayer = Replayer(
        adapter,
        cand_ids,
        batch_size=cfg.batch_size,
        full_vocab=cfg.full_vocab,
        keep=result.kept_layers,
    )
    if result.kept_layers:
        d = store.fullseq(int(rows[0])).values.shape[-1]
        kept_shape = (*shape, len(result.kept_layers), d)
        size = int(np.prod(kept_shape)) * 4
        if size > KEEP_LIMIT:
            raise UsageError(
                f"Expected the kept states to fit in {KEEP_LIMIT / 2**30:.3g} GiB. Got {size / 2**30:.2g} "
                f"GiB for [direction, example, layer, group, mode, kept layer, d] = {kept_shape}. "
                "Narrow --keep (final), --layers, --groups, --mode, --examples or use --one-way."
            )
        ex["kept"] = np.full(kept_shape, np.nan, np.float32)
    conds = {c for pair in cfg.directions for c in pair}
    last = _last_states(store, conds, layers)
    ids = store.examples().ids
    stored = store.outputs("cand_logprob")
    for lo in range(0, len(rows), cfg.examples_per_block):
        block = rows[lo : lo + cfg.examples_per_block]
        inputs = {}
        for r in block:
            pos = int(np.searchsorted(visible, r))
            inputs[int(r)] = replay_input(store, int(r), ids[pos], last, pos)
        cells = _cells(cfg, block, layers, inputs)
        kept = np.zeros((len(cells), *ex["kept"].shape[-2:]), np.float32) if "kept" in ex else None
        lp, base = replay_patches(replayer, inputs, [p for _, p in cells], kept)
        for i, (di, ei, li, gi, mi) in enumerate(c for c, _ in cells):
            ex["logprob"][di, lo + ei, li, gi, mi] = lp[i]
            if kept is not None:
                ex["kept"][di, lo + ei, li, gi, mi] = kept[i]
        _record_checks(ex["replay_check"], base, cfg, rows, layers, stored[at], store)
    _exact_metrics(ex, store, cfg, targets, at, stored)
    result.exact = ex


def _record_checks(
    check: np.ndarray,
    base: dict[tuple[int, str, int], np.ndarray],
    cfg: PatchConfig,
    rows: np.ndarray,
    layers: tuple[int, ...],
    stored: np.ndarray,
    store: Store,
) -> None:
    """Record how closely each unpatched replay reproduces the stored log-probs.

    ``stored`` [example, condition, candidate] holds the stored log-probs of ``rows``.
    """
    for (row, target, layer), lp in base.items():
        ei = int(np.flatnonzero(rows == row)[0])
        want = stored[ei, store.condition_index(target)]
        if not cfg.full_vocab:  # replay then normalises over the candidates only
            want = renormalise(want)
        for di, (_, tgt) in enumerate(cfg.directions):
            if tgt == target:
                check[di, ei, layers.index(layer)] = rowwise_error(lp, want)


def _exact_metrics(
    ex: dict[str, np.ndarray],
    store: Store,
    cfg: PatchConfig,
    targets: Targets,
    at: np.ndarray,
    stored: np.ndarray,
) -> None:
    """Add margin, delta, effect, top and flipped to ``ex`` from its log-probs."""
    lp = ex["logprob"]
    ran = np.isfinite(lp).all(axis=-1)
    ex["margin"] = margins(lp, targets, at, axis=1)
    m_t, m_s, top_t = [], [], []
    for src, tgt in cfg.directions:
        run_t = stored[at, store.condition_index(tgt)]
        m_t.append(margins(run_t, targets, at))
        m_s.append(margins(stored[at, store.condition_index(src)], targets, at))
        top_t.append(run_t.argmax(axis=-1))
    ex["margin_target"], ex["margin_source"] = np.stack(m_t), np.stack(m_s)
    ex["delta"] = ex["margin"] - ex["margin_target"][:, :, None, None, None]
    ex["effect"] = normalised(ex["delta"], ex["margin_source"] - ex["margin_target"], cfg.min_gap)
    top = np.where(ran, np.nan_to_num(lp, nan=-np.inf).argmax(axis=-1), -1)
    ex["top"] = top.astype(np.int16)
    flipped = top != np.stack(top_t)[:, :, None, None, None]
    ex["flipped"] = np.where(ran, flipped, -1).astype(np.int8)


def normalised(delta: np.ndarray, gap: np.ndarray, min_gap: float) -> np.ndarray:
    """Return delta / gap with ``gap`` broadcast over trailing axes; NaN where |gap| < min_gap."""
    g = gap.reshape(gap.shape + (1,) * (delta.ndim - gap.ndim)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.abs(g) >= max(min_gap, 1e-12), delta / g, np.nan)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- estimate


def run_estimate(
    store: Store,
    cfg: PatchConfig,
    gradients: GradientSource,
    targets: Targets,
    result: PatchResult,
) -> None:
    """Fill ``result.estimate`` with first-order estimates for every condition pair."""
    conds, lays = store.condition_names, tuple(store.layers)
    rows = store.rows()
    groups = cfg.position_groups
    c, n, nl, ng, nm = len(conds), len(rows), len(lays), len(groups), len(cfg.modes)
    est = np.full((c, c, n, nl, ng, nm), np.nan, np.float32)
    mode_at = [("state", "write").index(m) for m in cfg.modes]
    names = [g.name for g in groups]
    if "last" in names:
        gl = names.index("last")
        for li, layer in enumerate(lays):
            prev = _prev_last(store, layer)
            values = last_token_estimates(
                store.hidden(layer=layer, reduction="last"), prev, gradients.grad_last(layer)
            )  # [mode, source, target, example]
            if prev is not None and prev.size == 0:
                values[1] = np.nan
            for mi, m in enumerate(mode_at):
                est[:, :, :, li, gl, mi] = values[m]
    _full_estimates(store, gradients, groups, mode_at, est, rows)
    stored = store.outputs("cand_logprob")
    m = margins(stored, targets)  # [example, condition]
    gap = m.T[:, None, :] - m.T[None, :, :]  # [source, target, example]
    result.est_rows, result.est_layers = rows, lays
    result.estimate = {"est_delta": est, "est_effect": normalised(est, gap, cfg.min_gap)}


def _prev_last(store: Store, layer: int) -> np.ndarray | None:
    """Return the answer-position states at layer-1 (None at embed, empty when not stored)."""
    if layer == -1:
        return None
    if layer - 1 not in store.layers:
        return np.zeros(0, np.float32)
    return store.hidden(layer=layer - 1, reduction="last")


def _full_estimates(
    store: Store,
    gradients: GradientSource,
    groups: tuple[PositionGroup, ...],
    mode_at: list[int],
    est: np.ndarray,
    rows: np.ndarray,
) -> None:
    """Add image/text (any non-last group) estimates of the full-sequence examples to ``est``."""
    if all(g.name == "last" for g in groups):
        return
    committed = store.committed()
    for example in store.fullseq_examples():
        if not committed[example]:
            continue
        fs = store.fullseq(example)
        masks = group_masks(fs.kind, groups)
        values = full_sequence_estimates(
            fs.values, gradients.fullseq_grad(example), masks, fs.layers
        )  # [mode, source, target, layer, group]
        ci = [store.condition_index(c) for c in fs.conditions]
        li = [store.layer_index(v) for v in fs.layers]
        e = int(np.searchsorted(rows, example))
        for gi, group in enumerate(groups):
            if group.name == "last" or not masks[gi].any():
                continue
            for mi, m in enumerate(mode_at):
                block = values[m][:, :, :, gi]  # [source, target, layer]
                est[np.ix_(ci, ci, [e], li, [gi], [mi])] = block[:, :, None, :, None, None]


def agreement(result: PatchResult, top_k: int) -> None:
    """Compare estimates with exact effects on the same cells; keep the top cells' values."""
    if not result.exact or not result.estimate:
        return
    conds = list(result.conditions)
    e_at = np.searchsorted(result.est_rows, result.rows)
    l_at = np.asarray([result.est_layers.index(v) for v in result.layers], dtype=np.int64)
    paired = []
    for di, (src, tgt) in enumerate(result.directions):
        est = result.estimate["est_delta"][conds.index(src), conds.index(tgt)]
        est = est[np.ix_(e_at, l_at)]  # [example, layer, group, mode]
        exact = result.exact["delta"][di]
        result.agreement[f"{src}->{tgt}"] = compare(exact, est, top_k)
        paired.append((di, exact, est))
    result.agreement["all"] = compare(
        np.concatenate([p[1].ravel() for p in paired]),
        np.concatenate([p[2].ravel() for p in paired]),
        top_k,
    )
    result.top_cells = _top_cells(result, paired, top_k)


def _top_cells(
    result: PatchResult, paired: list[tuple[int, np.ndarray, np.ndarray]], k: int
) -> list[dict[str, Any]]:
    """Return the k cells of largest |estimate| with their exact values (AtP* re-check)."""
    flat = [
        (abs(float(est[idx])), di, idx, float(est[idx]), float(exact[idx]))
        for di, exact, est in paired
        for idx in zip(*np.nonzero(np.isfinite(est) & np.isfinite(exact)), strict=True)
    ]
    flat.sort(key=lambda x: -x[0])
    out = []
    for _, di, (ei, li, gi, mi), e_val, x_val in flat[:k]:
        out.append(
            {
                "direction": result.direction_names[di],
                "example": int(result.rows[ei]),
                "layer": int(result.layers[li]),
                "group": result.groups[gi],
                "mode": result.modes[mi],
                "estimate": e_val,
                "exact": x_val,
            }
        )
    return out


# --------------------------------------------------------------------------- entries


def patch(
    store: Store | str | Path,
    cfg: PatchConfig,
    *,
    adapter: VLMAdapter | None = None,
    gradients: GradientSource | None = None,
) -> PatchResult:
    """Return the patching result of ``store``; write it to ``cfg.out`` when set.

    ``adapter`` reuses a loaded model (its weights are not re-checked); ``gradients`` supplies
    margin gradients when the store has none (by default they are read from the store).
    """
    from priorscope.engine.store import open_store

    store = open_store(store)
    _check_conditions(store, cfg)
    targets = store_targets(store, cfg.prior_condition)
    result = PatchResult(
        config=cfg,
        directions=cfg.directions,
        groups=tuple(g.name for g in cfg.position_groups),
        modes=cfg.modes,
        candidates=tuple(store.candidates),
        conditions=tuple(store.condition_names),
    )
    if cfg.method in ("exact", "both"):
        if adapter is None:
            from priorscope.engine.patch.model import load_store_model

            adapter = load_store_model(store, cfg.model, device=cfg.device, dtype=cfg.dtype)
        run_exact(store, cfg, adapter, targets, result)
    if cfg.method in ("estimate", "both"):
        run_estimate(store, cfg, gradients or _store_gradients(store), targets, result)
    agreement(result, cfg.top_k)
    if cfg.out:
        write_patch(result, store, cfg.out)
    return result


def _store_gradients(store: Store) -> GradientSource:
    """Return the store's captured gradients, or raise saying how to capture them."""
    if not all(hasattr(store, m) for m in ("grad_last", "fullseq_grad")) or not store.has(
        "grad/last"
    ):
        raise StoreError(
            f"Expected margin gradients in {store.path} for --estimate. Got none. Capture with "
            "--grad (it stores them for every example and the full-sequence ones), or use "
            "--exact."
        )
    return store


def write_patch(result: PatchResult, store: Store, out: str | Path) -> str:
    """Write ``result`` to the results store at ``out`` (refused if made with another config)."""
    from priorscope.engine.patch.schema import PATCH_GROUP
    from priorscope.engine.store import open_results

    attrs = {"config": result.config.to_json(), "store": store.path, "model": store.model_ref}
    rs = open_results(out, PATCH_GROUP, mode="a", attrs=attrs)
    arrays: dict[str, np.ndarray] = {}
    if result.exact:
        arrays.update(example=result.rows, gold=result.gold, prior=result.prior, **result.exact)
    if result.estimate:
        arrays.update(est_example=result.est_rows, **result.estimate)
    if not result.exact:  # the required per-example arrays follow the estimate's examples
        at = np.searchsorted(store.rows(), result.est_rows)
        t = store_targets(store, result.config.prior_condition)
        arrays.update(example=result.est_rows, gold=t.gold[at], prior=t.prior[at])
    for name, values in arrays.items():
        values = np.asarray(values)
        chunks = [max(1, s) for s in values.shape]
        if name == "kept":  # the one large array: about 32 MiB chunks along its examples
            per_example = values[:, :1].nbytes or 1
            chunks[1] = max(1, min(chunks[1], (32 << 20) // per_example))
        rs.require_array(name, values.shape, values.dtype, tuple(chunks))
        rs.write(name, ..., values)
    coords = {
        "direction": result.direction_names,
        "layer": list(result.layers),
        "group": list(result.groups),
        "mode": list(result.modes),
        "candidate": list(result.candidates),
        "source_condition": list(result.conditions),
        "target_condition": list(result.conditions),
        "est_layer": list(result.est_layers),
        "kept_layer": list(result.kept_layers),
    }
    for dim, labels in coords.items():
        rs.set_coords(dim, labels)
    rs.update_attrs(
        {
            "agreement": {k: a.to_json() for k, a in result.agreement.items()},
            "top_cells": result.top_cells,
        }
    )
    result.path = str(out)
    return str(out)


def lens(
    store: Store | str | Path, *, out: str | Path | None = None, prior_condition: str = "total"
) -> LensResult:
    """Return the logit lens of ``store`` (see :func:`logit_lens`); write it to ``out`` if set."""
    from priorscope.engine.store import open_store

    handle = open_store(store)
    result = logit_lens(handle, prior_condition=prior_condition)
    if out is not None:
        write_lens(result, handle, out, prior_condition)
    return result


def write_lens(
    result: LensResult, store: Store, out: str | Path, prior_condition: str = "total"
) -> str:
    """Write a lens result to the results store at ``out``."""
    from priorscope.engine.patch.schema import LENS_GROUP
    from priorscope.engine.store import open_results

    config = {"prior_condition": prior_condition, "conditions": list(result.conditions)}
    rs = open_results(out, LENS_GROUP, mode="a", attrs={"config": config, "store": store.path})
    arrays = {
        "example": result.rows,
        "gold": result.targets.gold,
        "prior": result.targets.prior,
        "gold_logprob": result.gold_logprob,
        "prior_logprob": result.prior_logprob,
        "margin": result.margin,
        "top": result.top,
        "top_logprob": result.top_logprob,
        "final": result.final,
        "first_lead": result.first_lead,
        "settled": result.settled,
    }
    for name, values in arrays.items():
        values = np.asarray(values)
        rs.require_array(name, values.shape, values.dtype, tuple(max(1, s) for s in values.shape))
        rs.write(name, ..., values)
    for dim, labels in (("condition", list(result.conditions)), ("layer", list(result.layers))):
        rs.set_coords(dim, labels)
    rs.update_attrs({"check_error": result.check_error, "candidates": list(result.candidates)})
    return str(out)


__all__ = ["PatchResult", "lens", "patch", "write_lens", "write_patch"]
