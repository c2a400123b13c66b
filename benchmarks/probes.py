"""Benchmark probes: priorscope's batched probes vs sklearn on the same cells and splits.

A store at Qwen2.5-VL-3B shape (d_model 2048, 3 site reductions, conditions clean and total)
with N examples of structured random data: a large mean offset, a low-rank background, noise,
and planted low-rank class signal for three targets (gold: 8 classes, t2: 4, t3: 2) at some
layers, plus a Hewitt & Liang control column (a random label per question type), the fourth
label set. The full model has 37 layer sites; ``--layers K`` writes K of them (evenly spaced)
to keep the store within this machine's means, and the report says how many.

Measured in one run, one thread each (torch.set_num_threads(1), OMP_NUM_THREADS=1):

* **priorscope linear**: ``fit_probes`` with kind ``logistic`` (multinomial, C chosen per probe
  and fold by inner validation over the C grid, then refitted), in-process, end to end
  including every store read. A probe = one (target, train condition, layer, reduction, fold)
  classifier, scored on both test conditions.
* **sklearn linear**: ``LogisticRegression(lbfgs)`` doing the same work for a sample of whole
  (train condition, layer, reduction) groups, every target: the same folds, standardisation,
  C grid, inner validation fold and refit. sklearn's defaults otherwise (tol 1e-4,
  max_iter 100); the time of its refits alone (C given) is reported too.
* **priorscope MLP** / **sklearn MLP**: one hidden layer of 64, Adam, minibatch 256, the same
  weight-decay grid and early stopping on the same validation fold (sklearn through
  ``MLPClassifier.partial_fit`` one epoch at a time, keeping the best epoch's weights).

Speed is measured twice: the whole run's probes per second (every layer, reduction, target and
training condition, in-process, store reads included), and side by side on sampled (train,
layer, reduction) groups, where priorscope fits the group and sklearn redoes the same probes
right after it, so both see the same load on a shared machine; the ratio is quoted per group
(median) and pooled. Accuracy agreement: pooled held-out accuracy of every sampled cell.
Peak memory: the maximum resident set of the child process that runs the whole fit.

    OMP_NUM_THREADS=1 python benchmarks/probes.py --layers 4
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their pools

import argparse
import copy
import json
import multiprocessing
import platform
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priorscope.engine.probes import ProbeConfig, ProbeResult, fit_probes
from priorscope.engine.probes.synthetic import PlantedStore, write_planted_store
from priorscope.engine.store import open_store

RESULTS = Path(__file__).resolve().parent / "results" / "probes.json"
TARGETS = ("gold", "t2", "t3", "control")
# What one probe is, for priorscope and sklearn alike (both sides count the same things).
PROBE = (
    "one classifier per (label set, train condition, layer, reduction, outer fold), "
    "with its regularisation chosen by inner validation over the whole grid and refitted on "
    "the outer training folds, then scored on every test condition"
)


def planted(args: argparse.Namespace) -> PlantedStore:
    """Return the store's design: K of 37 sites, signal at some layers only."""
    sites = np.linspace(-1, 35, args.layers).round().astype(int).tolist()
    signal: dict[tuple[Any, ...], float] = {}
    for i, layer in enumerate(sites):
        if i == 0:
            continue  # embed: no signal anywhere
        for red in ("last", "text_mean"):
            signal[(layer, red, "clean")] = 0.35
            signal[("t2", layer, red, "clean")] = 0.3
            signal[("t3", layer, red, "clean")] = 0.25
        signal[(layer, "last", "total")] = 0.15  # a weak prior-like trace under total
    return PlantedStore(
        n=args.n,
        d_model=args.d,
        layers=tuple(sites),
        reductions=("last", "image_mean", "text_mean"),
        conditions=("clean", "total"),
        n_classes=8,
        rank=8,
        signal=signal,
        targets={"t2": 4, "t3": 2},
        control_types=64,
        hidden_dtype="bfloat16",
        shard_examples=256,
        background_rank=32,
    )


def _child(fn: Any, queue: Any, *args: Any) -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    fn(*args)
    queue.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def in_child(fn: Any, *args: Any) -> tuple[float, float]:
    """Return (seconds, peak RSS in MiB) of ``fn(*args)`` run in a fresh forked process."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, queue, *args))
    proc.start()
    seconds, rss_kib = queue.get()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"benchmark child failed with exit code {proc.exitcode}")
    return seconds, rss_kib / 1024


def run_ours(store: str, cfg: ProbeConfig, out: str) -> None:
    fit_probes(store, cfg, out)


# ---- sklearn on the same cells -------------------------------------------------------------


def _data(store: Any, layer: int, red: str) -> dict[str, np.ndarray]:
    return {
        c: store.hidden(layer=layer, condition=c, reduction=red).astype(np.float64)
        for c in store.condition_names
    }


def sklearn_logistic_cell(
    xs: dict[str, np.ndarray],
    y: np.ndarray,
    fold: np.ndarray,
    train: str,
    cs: tuple[float, ...],
    k: int,
    same_c: list[float] | None = None,
) -> tuple[dict[str, float], float, float, dict[str, float]]:
    """Return (accuracy per test condition, seconds with C search, seconds of the refits alone,
    accuracy per test condition at ``same_c[f]``: priorscope's chosen C, fold by fold, untimed).
    """
    from sklearn.linear_model import LogisticRegression

    hits = dict.fromkeys(xs, 0)
    hits_same = dict.fromkeys(xs, 0)
    search = refit = 0.0
    x = xs[train]
    for f in range(k):
        outer, v = fold != f, (f + 1) % k
        inner = outer & (fold != v)
        mu, sd = x[outer].mean(0), x[outer].std(0)
        z = (x - mu) / sd
        t0 = time.perf_counter()
        accs = [
            (
                LogisticRegression(C=c).fit(z[inner], y[inner]).predict(z[fold == v])
                == y[fold == v]
            ).mean()
            for c in cs
        ]
        t1 = time.perf_counter()
        model = LogisticRegression(C=cs[int(np.argmax(accs))]).fit(z[outer], y[outer])
        t2 = time.perf_counter()
        search += t2 - t0
        refit += t2 - t1
        same = None
        if same_c is not None:  # the same regularisation as priorscope's probe of this fold
            same = LogisticRegression(C=same_c[f]).fit(z[outer], y[outer])
        for c, xc in xs.items():
            zt = (xc[fold == f] - mu) / sd
            hits[c] += int((model.predict(zt) == y[fold == f]).sum())
            if same is not None:
                hits_same[c] += int((same.predict(zt) == y[fold == f]).sum())
    acc = {c: h / len(y) for c, h in hits.items()}
    return acc, search, refit, {c: h / len(y) for c, h in hits_same.items()}


def _mlp_fit(
    z: np.ndarray,
    y: np.ndarray,
    zv: np.ndarray,
    yv: np.ndarray,
    alpha: float,
    cfg: ProbeConfig,
    classes: np.ndarray,
    seed: int,
) -> tuple[Any, float]:
    """Return (best model, its validation loss): partial_fit epochs, early stopping on (zv, yv)."""
    from sklearn.metrics import log_loss
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(
        hidden_layer_sizes=(cfg.mlp_hidden[0],),
        alpha=alpha,
        batch_size=cfg.mlp_batch,
        learning_rate_init=cfg.mlp_lr,
        random_state=seed,
    )
    best, best_loss, stale = None, np.inf, 0
    for _ in range(cfg.mlp_max_epochs):
        model.partial_fit(z, y, classes=classes)
        loss = log_loss(yv, model.predict_proba(zv), labels=classes)
        if loss < best_loss - 1e-4:
            best, best_loss, stale = copy.deepcopy(model), loss, 0
        else:
            stale += 1
        if stale >= cfg.mlp_patience:
            break
    return best, best_loss


def sklearn_mlp_cell(
    xs: dict[str, np.ndarray], y: np.ndarray, fold: np.ndarray, train: str, cfg: ProbeConfig, k: int
) -> tuple[dict[str, float], float]:
    """Return (accuracy per test condition, seconds) of sklearn MLPs doing priorscope's procedure."""
    hits = dict.fromkeys(xs, 0)
    classes = np.unique(y)
    x = xs[train].astype(np.float32)
    seconds = 0.0
    for f in range(k):
        v = (f + 1) % k
        inner = (fold != f) & (fold != v)
        mu, sd = x[inner].mean(0), x[inner].std(0)
        t0 = time.perf_counter()
        fits = [
            _mlp_fit(
                (x[inner] - mu) / sd,
                y[inner],
                (x[fold == v] - mu) / sd,
                y[fold == v],
                a,
                cfg,
                classes,
                f,
            )
            for a in cfg.mlp_weight_decays
        ]
        model = min(fits, key=lambda m: m[1])[0]
        seconds += time.perf_counter() - t0
        for c, xc in xs.items():
            hits[c] += int(
                (model.predict((xc[fold == f].astype(np.float32) - mu) / sd) == y[fold == f]).sum()
            )
    return {c: h / len(y) for c, h in hits.items()}, seconds


def sample_groups(res: ProbeResult, groups: int, seed: int) -> list[tuple[str, int, str]]:
    """Return ``groups`` random (train, layer, reduction) groups of the run, drawn with ``seed``."""
    coords = res.attrs["coords"]
    grid = [
        (tr, int(ly), r)
        for tr in coords["train"]
        for ly in coords["layer"]
        for r in coords["reduction"]
    ]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(grid), size=min(groups, len(grid)), replace=False)
    return [grid[i] for i in sorted(picked)]


def _ours_group(
    plan: Any, xs: dict[str, np.ndarray], train: str
) -> tuple[dict[tuple[str, str], float], dict[str, list[float]]]:
    """Return priorscope's held-out accuracy per (target, test) of one group, fitted now, and
    the regularisation it chose per target and fold."""
    from priorscope.engine.probes.cells import TARGET, evaluate
    from priorscope.engine.probes.task import fit_site

    labels_train = plan.labels[:, plan.conditions.index(train)]
    x = torch.from_numpy(np.ascontiguousarray(xs[train], dtype=np.float32))
    fits = fit_site(x, plan, labels_train)
    out = {}
    for test, xt in xs.items():
        labels_test = plan.labels[:, plan.conditions.index(test)]
        xt_t = torch.from_numpy(np.ascontiguousarray(xt, dtype=np.float32))
        for kind, models in fits.items():
            held = evaluate(
                plan.specs,
                models.predict,
                kind != "ridge",
                xt_t,
                plan.fold,
                labels_test,
                labels_train,
                plan.k,
            )
            for j, spec in enumerate(plan.specs):
                if spec.role == TARGET:
                    out[(spec.name, test)] = held.correct[j] / held.n[j]
    regs = {
        spec.name: fits[plan.config.kinds[0]].reg[j].tolist()
        for j, spec in enumerate(plan.specs)
        if spec.role == TARGET
    }
    return out, regs


def _sklearn_group(
    kind: str,
    xs: dict[str, np.ndarray],
    table: Any,
    fold: np.ndarray,
    train: str,
    cfg: ProbeConfig,
    regs: dict[str, list[float]],
) -> tuple[dict[tuple[str, str], float], float, float, dict[tuple[str, str], float]]:
    """Return sklearn's (accuracy per (target, test), seconds, seconds of refits alone,
    accuracy per (target, test) at priorscope's chosen C; logistic only)."""
    acc_all: dict[tuple[str, str], float] = {}
    same_all: dict[tuple[str, str], float] = {}
    seconds = refit_seconds = 0.0
    for target in TARGETS:
        raw = (
            table.column(target)
            if target != "gold"
            else np.array([g[0] for g in table.gold], dtype=object)
        )
        classes = sorted(set(raw.tolist()))
        y = np.array([classes.index(v) for v in raw])
        if kind == "logistic":
            acc, sec, refit, same = sklearn_logistic_cell(
                xs, y, fold, train, cfg.logistic_cs, cfg.folds, regs[target]
            )
            refit_seconds += refit
            same_all.update({(target, test): a for test, a in same.items()})
        else:
            acc, sec = sklearn_mlp_cell(xs, y, fold, train, cfg, cfg.folds)
        seconds += sec
        acc_all.update({(target, test): a for test, a in acc.items()})
    return acc_all, seconds, refit_seconds, same_all


def side_by_side(
    store_path: str,
    kind: str,
    groups: list[tuple[str, int, str]],
    cfg: ProbeConfig,
) -> dict[str, Any]:
    """Return per-group seconds of priorscope and of sklearn doing the same probes, interleaved.

    Each sampled (train, layer, reduction) group is fitted by priorscope (every target at once,
    as a task does) and right after by sklearn (target by target, the same procedure), so both
    see the same load on a shared machine; the ratio is sklearn seconds / priorscope seconds.
    """
    from priorscope.engine.probes.run import build_plan

    store = open_store(store_path)
    plan, _, _ = build_plan(store.snapshot(), cfg, "(not written)")
    table = store.examples()
    rows: list[dict[str, Any]] = []
    timing: list[dict[str, Any]] = []
    for train, layer, red in groups:
        xs = _data(store, layer, red)
        t0 = time.perf_counter()
        ours, regs = _ours_group(plan, xs, train)
        t_ours = time.perf_counter() - t0
        theirs, t_sk, t_refit, same = _sklearn_group(kind, xs, table, plan.fold, train, cfg, regs)
        for (target, test), a in theirs.items():
            mine = float(ours[(target, test)])
            extra = {}
            if (target, test) in same:
                extra = {
                    "sklearn_same_c": same[(target, test)],
                    "diff_same_c": abs(mine - same[(target, test)]),
                    "c_per_fold": regs[target],
                }
            rows.append(
                {
                    **extra,
                    "target": target,
                    "train": train,
                    "test": test,
                    "layer": layer,
                    "reduction": red,
                    "priorscope": mine,
                    "sklearn": a,
                    "diff": abs(mine - a),
                }
            )
        timing.append(
            {
                "train": train,
                "layer": layer,
                "reduction": red,
                "priorscope_s": t_ours,
                "sklearn_s": t_sk,
                "sklearn_refit_only_s": t_refit,
                "ratio": t_sk / t_ours,
            }
        )
        print(
            f"  {kind} {train}/{layer}/{red}: priorscope {t_ours:.1f} s, sklearn {t_sk:.1f} s",
            flush=True,
        )
    return _summary(kind, timing, rows, len(groups) * len(TARGETS) * cfg.folds)


def _summary(
    kind: str, timing: list[dict[str, Any]], rows: list[dict[str, Any]], probes: int
) -> dict[str, Any]:
    diffs = [float(r["diff"]) for r in rows]
    total_ours = sum(t["priorscope_s"] for t in timing)
    total_sk = sum(t["sklearn_s"] for t in timing)
    out: dict[str, Any] = {
        "groups": timing,
        "cells": rows,
        "probes": probes,
        "priorscope_probes_per_s": probes / total_ours,
        "sklearn_probes_per_s": probes / total_sk,
        "median_ratio": statistics.median(t["ratio"] for t in timing),
        "pooled_ratio": total_sk / total_ours,
        "max_abs_diff": max(diffs),
        "median_abs_diff": statistics.median(diffs),
    }
    same = [float(r["diff_same_c"]) for r in rows if "diff_same_c" in r]
    if same:
        out["max_abs_diff_same_c"] = max(same)
        out["median_abs_diff_same_c"] = statistics.median(same)
    if kind == "logistic":
        refit = sum(t["sklearn_refit_only_s"] for t in timing)
        out["sklearn_refit_only_probes_per_s"] = probes / refit
        out["pooled_ratio_vs_refit_only"] = refit / total_ours
    return out


# ---- with the control tasks and the permutation null ----------------------------------------


def _sklearn_plan_group(
    plan: Any, xs: dict[str, np.ndarray], train: str, cfg: ProbeConfig
) -> tuple[dict[tuple[int, str], float], float]:
    """Return sklearn's (accuracy per (probe, test), seconds) for every probe of ``plan``.

    The same probes priorscope fits: targets and control tasks choose C on the inner fold and
    are refitted; each permutation probe is refitted at its target's C (sklearn's own choice)
    on the same permuted training labels (``fold_labels``).
    """
    from sklearn.linear_model import LogisticRegression

    from priorscope.engine.probes.cells import PERM, fold_labels

    labels_train = plan.labels[:, plan.conditions.index(train)]
    x, fold, k = xs[train], plan.fold, plan.k
    hits = {(j, c): 0 for j in range(len(plan.specs)) for c in xs}
    seconds = 0.0
    for f in range(k):
        out_rows = np.flatnonzero(fold != f)
        y_out = fold_labels(plan.specs, labels_train, out_rows, cfg.seed, f)
        inner = fold[out_rows] != (f + 1) % k
        mu, sd = x[out_rows].mean(0), x[out_rows].std(0)
        z = (x[out_rows] - mu) / sd
        chosen: dict[int, float] = {}
        t0 = time.perf_counter()
        models = {}
        for j, spec in enumerate(plan.specs):
            y = y_out[:, j]
            if spec.role == PERM:
                c = chosen[spec.base]
            else:
                accs = [
                    (
                        LogisticRegression(C=c).fit(z[inner], y[inner]).predict(z[~inner])
                        == y[~inner]
                    ).mean()
                    for c in cfg.logistic_cs
                ]
                c = chosen[j] = cfg.logistic_cs[int(np.argmax(accs))]
            models[j] = LogisticRegression(C=c).fit(z, y)
        seconds += time.perf_counter() - t0
        held = fold == f
        for test, xt in xs.items():
            zt = (xt[held] - mu) / sd
            labels_test = plan.labels[held, plan.conditions.index(test)]
            for j, spec in enumerate(plan.specs):
                pred = models[j].predict(zt)
                hits[(j, test)] += int((pred == labels_test[:, spec.score_on]).sum())
    n = len(fold)
    return {key: h / n for key, h in hits.items()}, seconds


def side_by_side_controls(
    store_path: str, groups: list[tuple[str, int, str]], cfg: ProbeConfig
) -> dict[str, Any]:
    """Return the side-by-side figures of a run with ``--controls``: targets, control tasks and
    ``cfg.permutations`` permutation probes per target, all counted as probes on both sides."""
    from priorscope.engine.probes.cells import evaluate
    from priorscope.engine.probes.run import build_plan
    from priorscope.engine.probes.task import fit_site

    store = open_store(store_path)
    plan, _, _ = build_plan(store.snapshot(), cfg, "(not written)")
    rows: list[dict[str, Any]] = []
    timing: list[dict[str, Any]] = []
    for train, layer, red in groups:
        xs = _data(store, layer, red)
        labels_train = plan.labels[:, plan.conditions.index(train)]
        x = torch.from_numpy(np.ascontiguousarray(xs[train], dtype=np.float32))
        t0 = time.perf_counter()
        models = fit_site(x, plan, labels_train)["logistic"]
        t_ours = time.perf_counter() - t0
        theirs, t_sk = _sklearn_plan_group(plan, xs, train, cfg)
        for test, xt in xs.items():
            labels_test = plan.labels[:, plan.conditions.index(test)]
            xt_t = torch.from_numpy(np.ascontiguousarray(xt, dtype=np.float32))
            held = evaluate(
                plan.specs, models.predict, True, xt_t, plan.fold, labels_test, labels_train, plan.k
            )
            for j, spec in enumerate(plan.specs):
                mine = float(held.correct[j] / held.n[j])
                a = theirs[(j, test)]
                rows.append(
                    {
                        "probe": spec.name,
                        "role": spec.role,
                        "train": train,
                        "test": test,
                        "layer": layer,
                        "reduction": red,
                        "priorscope": mine,
                        "sklearn": a,
                        "diff": abs(mine - a),
                    }
                )
        timing.append(
            {
                "train": train,
                "layer": layer,
                "reduction": red,
                "priorscope_s": t_ours,
                "sklearn_s": t_sk,
                "sklearn_refit_only_s": float("nan"),
                "ratio": t_sk / t_ours,
            }
        )
        print(
            f"  logistic+controls {train}/{layer}/{red}: {len(plan.specs)} probes x {plan.k} "
            f"folds: priorscope {t_ours:.1f} s, sklearn {t_sk:.1f} s",
            flush=True,
        )
    out = _summary("controls", timing, rows, len(groups) * len(plan.specs) * plan.k)
    roles = ("target", "control", "perm")
    out["probes_per_group_and_fold"] = {r: sum(s.role == r for s in plan.specs) for r in roles}
    out["max_abs_diff_by_role"] = {
        r: max((float(c["diff"]) for c in rows if c["role"] == r), default=float("nan"))
        for r in roles
    }
    return out


# ---- main ----------------------------------------------------------------------------------


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4, help="layer sites written (of 37)")
    parser.add_argument("--sample-linear", type=int, default=2, help="groups sklearn redoes")
    parser.add_argument("--sample-mlp", type=int, default=1, help="groups sklearn MLP redoes")
    parser.add_argument("--mlp-reductions", default="last", help="reductions the MLP runs cover")
    parser.add_argument(
        "--sample-controls",
        type=int,
        default=1,
        help="groups redone side by side with --controls (control tasks + permutation null)",
    )
    parser.add_argument("--kinds", default="logistic,mlp")
    parser.add_argument("--backend", default="cpu", help="cpu, cuda or cuml (sklearn: CPU)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=str(RESULTS))
    return parser.parse_args()


def _header(args: argparse.Namespace, design: PlantedStore, write_s: float) -> dict[str, Any]:
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k not in ("workdir", "json")
    )
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": 1,
        },
        "command": f"OMP_NUM_THREADS=1 python benchmarks/probes.py {flags}",
        "store": {
            "n": design.n,
            "d_model": design.d_model,
            "layer_sites_written": len(design.layers),
            "layer_sites_full_model": 37,
            "reductions": list(design.reductions),
            "conditions": list(design.conditions),
            "targets": list(TARGETS),
            "write_seconds": write_s,
        },
    }


def run_kind(
    kind: str, args: argparse.Namespace, design: PlantedStore, store: str, work: Path
) -> dict[str, Any]:
    """Return the figures of one kind: priorscope's run, and sklearn on sampled cells."""
    reductions = tuple(args.mlp_reductions.split(",")) if kind == "mlp" else design.reductions
    cfg = ProbeConfig(
        targets=TARGETS,
        kinds=(kind,),
        sites=reductions,
        train=("clean", "total"),
        test=("all",),
        min_class=5,
        backend=args.backend,
    )
    out = str(work / f"{kind}.probes.zarr")
    shutil.rmtree(out, ignore_errors=True)
    seconds, rss = in_child(run_ours, store, cfg, out)
    res = ProbeResult(out)
    probes = len(TARGETS) * 2 * len(design.layers) * len(reductions) * cfg.folds
    entry: dict[str, Any] = {
        "probe_definition": PROBE,
        "reductions": list(reductions),
        "probes": probes,
        "seconds": seconds,
        "probes_per_s": probes / seconds,
        "peak_rss_mib": rss,
        "backend": args.backend,
    }
    count = args.sample_linear if kind == "logistic" else args.sample_mlp
    if count > 0:
        entry["side_by_side"] = side_by_side(store, kind, sample_groups(res, count, 1), cfg)
    return entry


def run_controls(
    args: argparse.Namespace, design: PlantedStore, store: str, work: Path
) -> dict[str, Any]:
    """Return the side-by-side figures of logistic probes with control tasks and a null."""
    cfg = ProbeConfig(
        targets=TARGETS[:3],
        kinds=("logistic",),
        sites=design.reductions,
        train=("clean", "total"),
        test=("all",),
        min_class=5,
        backend=args.backend,
        controls=True,
        permutations=10,
    )
    res = ProbeResult(str(work / "logistic.probes.zarr"))
    entry = side_by_side_controls(store, sample_groups(res, args.sample_controls, 2), cfg)
    entry["probe_definition"] = PROBE + "; permutation probes reuse their target's C (no search)"
    return entry


def _print_controls(s: dict[str, Any]) -> None:
    per = s["probes_per_group_and_fold"]
    print(
        f"\nlogistic with --controls ({per['target']} targets, {per['control']} control tasks, "
        f"{per['perm']} permutation probes per group and fold), side by side on "
        f"{len(s['groups'])} groups ({s['probes']} probes):"
    )
    print(f"  {'priorscope':28s}{s['priorscope_probes_per_s']:8.3f} probes/s")
    print(f"  {'sklearn, same procedure':28s}{s['sklearn_probes_per_s']:8.3f} probes/s")
    print(f"  ratio: median {s['median_ratio']:.2f}x, pooled {s['pooled_ratio']:.2f}x")
    print(
        f"  accuracy |priorscope - sklearn|: max {s['max_abs_diff']:.4f}, "
        f"median {s['median_abs_diff']:.4f} over {len(s['cells'])} (probe, test) pairs; "
        + ", ".join(f"max {r} {v:.4f}" for r, v in s["max_abs_diff_by_role"].items())
    )


def main() -> None:
    args = _arguments()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # sklearn's ConvergenceWarning at max_iter=100 (its default)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="probes-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    design = planted(args)
    store = str(work / "bench.zarr")
    t0 = time.perf_counter()
    if not (Path(store) / "zarr.json").exists():
        write_planted_store(store, design)
    report = _header(args, design, time.perf_counter() - t0)
    for kind in args.kinds.split(","):
        report[kind] = run_kind(kind, args, design, store, work)
        _print(kind, report[kind])
    if "logistic" in args.kinds.split(",") and args.sample_controls > 0:
        report["logistic_with_controls"] = run_controls(args, design, store, work)
        _print_controls(report["logistic_with_controls"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


def _print(kind: str, r: dict[str, Any]) -> None:
    print(f"\n{kind}: {r['probes']} probes ({', '.join(r['reductions'])}), backend {r['backend']}")
    print(f"whole run, in-process: {r['probes_per_s']:.3f} probes/s ({r['seconds']:.1f} s)")
    print(f"peak RSS of the probe fit: {r['peak_rss_mib']:.0f} MiB")
    if "side_by_side" not in r:
        return
    s = r["side_by_side"]
    print(f"side by side on {len(s['groups'])} groups ({s['probes']} probes), interleaved:")
    print(f"  {'priorscope':28s}{s['priorscope_probes_per_s']:8.3f} probes/s")
    print(f"  {'sklearn, same procedure':28s}{s['sklearn_probes_per_s']:8.3f} probes/s")
    if "sklearn_refit_only_probes_per_s" in s:
        print(
            f"  {'sklearn, one fit at given C':28s}{s['sklearn_refit_only_probes_per_s']:8.3f} probes/s"
        )
    print(
        f"  ratio (sklearn s / priorscope s): median {s['median_ratio']:.2f}x, pooled {s['pooled_ratio']:.2f}x"
    )
    print(
        f"  accuracy |priorscope - sklearn|: max {s['max_abs_diff']:.4f}, "
        f"median {s['median_abs_diff']:.4f} over {len(s['cells'])} (cell, test condition) pairs"
    )
    if "max_abs_diff_same_c" in s:
        print(
            f"  at priorscope's chosen C (sklearn refitted with it): max "
            f"{s['max_abs_diff_same_c']:.4f}, median {s['median_abs_diff_same_c']:.4f}"
        )


if __name__ == "__main__":
    main()
