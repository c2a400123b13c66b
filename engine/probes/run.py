"""Run probes over a store as a dask graph: one task per (layer, training condition).

The driver reads only small things (the example table, the model's answers, the commit mask),
builds the labels, the split and the probe list once (:class:`Plan`), and hands every task the
same plan. A task reads its layer's hidden states of its training condition, one shard at a
time through the store handle, fits every probe of every reduction and kind, scores them on
each test condition (read the same way, one at a time, so memory holds two (layer, condition)
slabs), and writes its cells into the results store, then its ``done`` flag.

Tasks run in-process (dask's synchronous scheduler), on a LocalCluster of worker processes
(``workers``), or on an existing cluster (``scheduler``). Each task pins torch to one thread and
computes in a fixed order, so the cells are bitwise identical whichever process runs them, and
a resumed run skips the tasks whose flag is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from priorscope.engine.errors import UsageError
from priorscope.engine.probes.cells import ProbeSpec, probe_specs
from priorscope.engine.probes.config import ProbeConfig, Resolved, resolve
from priorscope.engine.probes.controls import control_target
from priorscope.engine.probes.results import PROBES_GROUP, ProbeResult, create_arrays, default_out
from priorscope.engine.probes.splits import (
    Split,
    assign_folds,
    dataset_image_keys,
    group_keys,
    split_note,
)
from priorscope.engine.probes.targets import Target, TargetInputs, build_targets
from priorscope.engine.store import Store, open_results, open_store

LINEAR_KINDS = ("ridge", "logistic")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Plan:
    """Everything a task needs, identical for every task of a run (shipped once per worker).

    ``labels`` [example, condition, label set] int32 holds the usable targets, then their
    control tasks; ``target_set[i]`` is the label set of requested target i (-1: unusable).
    """

    store_path: str
    out: str
    rows: np.ndarray
    fold: np.ndarray
    k: int
    labels: np.ndarray
    specs: list[ProbeSpec]
    target_names: list[str]
    target_set: list[int]
    conditions: list[str]
    store_reductions: list[str]
    resolved: Resolved
    config: ProbeConfig
    n_classes_max: int
    permutations: int
    d_model: int

    def shape(self) -> dict[str, int]:
        """Return the size of every results dimension."""
        r = self.resolved
        return {
            "target": len(self.target_names),
            "kind": len(self.config.kinds),
            "train": len(r.train),
            "test": len(r.test),
            "layer": len(r.layers),
            "reduction": len(r.sites),
            "fold": self.k,
            "perm": max(self.permutations, 1),
            "linear_kind": len(LINEAR_KINDS),
            "class": self.n_classes_max,
            "d_model": self.d_model,
        }


def read_targets(store: Store, config: ProbeConfig, train: tuple[str, ...]) -> list[Target]:
    """Return the requested targets of ``store``'s visible examples, classes decided on ``train``."""
    table = store.examples()
    inputs = TargetInputs(
        conditions=tuple(store.condition_names),
        answer=store.outputs("answer"),
        score=store.outputs("score"),
        column=table.column,
        gold=table.gold,
    )
    return build_targets(config.targets, inputs, train, config.min_class, config.rare)


def store_split(store: Store, table: Any, folds: int, seed: int, group_column: str) -> Split:
    """Return the grouped k-fold split of ``table`` (rows of ``store``) that probes use.

    ``group_column``: 'auto' (image identity, see :func:`.splits.group_keys`), 'id' or a column.
    Layer-replacement read-outs use it too, so their folds keep an image's questions together.
    """
    why = [""]

    def images() -> tuple[np.ndarray | None, str]:
        keys, why[0] = dataset_image_keys(store.attrs, table.ids)
        return keys, why[0]

    keys, group_by = group_keys(
        table.ids, table.metadata_keys(), table.column, group_column, images
    )
    return assign_folds(keys, folds, seed, group_by, split_note(group_by, why[0]))


def build_plan(store: Store, config: ProbeConfig, out: str) -> tuple[Plan, list[Target], Split]:
    """Return (plan, targets, split) of ``config`` on ``store``; ``store`` should be a snapshot."""
    resolved = resolve(config, store)
    table = store.examples()
    targets = read_targets(store, config, resolved.train)
    usable = [t for t in targets if t.usable]
    sets: list[Target] = list(usable)
    controls: dict[int, int] = {}
    if config.controls:
        types = table.column(config.control_column)
        for i, t in enumerate(usable):
            controls[i] = len(sets)
            sets.append(control_target(t, types, config.seed))
    split = store_split(store, table, config.folds, config.seed, config.group_column)
    perms = config.permutations if config.controls else 0
    specs = probe_specs([s.name for s in sets], [s.n_classes for s in sets], controls, perms)
    n_cond = len(store.condition_names)
    labels = np.zeros((table.n, n_cond, len(sets)), dtype=np.int32)
    for i, s in enumerate(sets):
        labels[:, :, i] = s.labels
    plan = Plan(
        store_path=store.path,
        out=out,
        rows=store.rows(),
        fold=split.fold,
        k=split.k,
        labels=labels,
        specs=specs,
        target_names=[t.name for t in targets],
        target_set=[usable.index(t) if t.usable else -1 for t in targets],
        conditions=list(store.condition_names),
        store_reductions=list(store.reductions),
        resolved=resolved,
        config=config,
        n_classes_max=max([t.n_classes for t in targets] + [1]),
        permutations=perms,
        d_model=_d_model(store),
    )
    return plan, targets, split


def _d_model(store: Store) -> int:
    layout = store.attrs.get("layout", {})
    if isinstance(layout, dict) and layout.get("d_model"):
        return int(layout["d_model"])
    return int(store.model_ref.get("d_model", 0))


def identity(plan: Plan) -> dict[str, Any]:
    """Return what a resume must match: the config, the store and its analysed rows, the axes."""
    digest = hashlib.sha256(np.ascontiguousarray(plan.rows).tobytes()).hexdigest()[:16]
    r = plan.resolved
    return {
        **plan.config.to_json(),
        "store": plan.store_path,
        "rows": {"n": int(plan.rows.size), "sha256_16": digest},
        # The folds themselves: a resume must never mix two splits (e.g. once the store's
        # image identity became readable, the groups change).
        "folds_sha256_16": hashlib.sha256(np.ascontiguousarray(plan.fold).tobytes()).hexdigest()[
            :16
        ],
        "layers": list(r.layers),
        "reductions": list(r.sites),
        "train_conditions": list(r.train),
        "test_conditions": list(r.test),
        "resolved_backend": r.backend,
    }


# ---- the driver ----------------------------------------------------------------------------


def prepare(
    store: str | Store, config: ProbeConfig, out: str | None = None
) -> tuple[Plan, list[Target], Split]:
    """Return (plan, targets, split) after creating or reopening the results store.

    A results store written with another configuration, another store or other analysed rows
    is refused (ConfigMismatchError) rather than mixed.
    """
    st = open_store(store).snapshot()
    path = str(out) if out is not None else default_out(st.path)
    plan, targets, split = build_plan(st, config, path)
    r = plan.resolved
    rs = open_results(path, PROBES_GROUP, mode="a", attrs={"config": identity(plan)})
    create_arrays(rs, plan.shape(), chunk={"train": 1, "layer": 1})
    rs.update_attrs(
        {
            "coords": {
                "target": plan.target_names,
                "kind": list(config.kinds),
                "train": list(r.train),
                "test": list(r.test),
                "layer": list(r.layers),
                "reduction": list(r.sites),
                "fold": list(range(plan.k)),
                "perm": list(range(plan.shape()["perm"])),
                "linear_kind": list(LINEAR_KINDS),
            },
            "site": [("embed" if layer == -1 else f"resid.{layer}") for layer in r.layers],
            "targets": [t.summary() for t in targets],
            "split": split.summary(),
            "n_examples": int(plan.rows.size),
            "model": st.model_ref,
            "model_accuracy": _model_accuracy(st, r.test),
        }
    )
    return plan, targets, split


def _model_accuracy(store: Store, conditions: tuple[str, ...]) -> dict[str, float]:
    """Return the model's own accuracy per condition (the report shows it beside the probes)."""
    score = np.asarray(store.outputs("score"), dtype=np.float64)
    out = {}
    for c in conditions:
        col = score[:, store.condition_names.index(c)]
        col = col[np.isfinite(col)]
        out[c] = float(col.mean()) if col.size else float("nan")
    return out


def pending(plan: Plan) -> list[tuple[int, int]]:
    """Return the (layer index, train index) tasks whose cells are not written yet."""
    rs = open_results(plan.out, PROBES_GROUP, mode="r")
    done = rs.read("done").astype(bool)
    r = plan.resolved
    return [
        (li, ti) for ti in range(len(r.train)) for li in range(len(r.layers)) if not done[ti, li]
    ]


def fit_probes(
    store: str | Store,
    config: ProbeConfig,
    out: str | None = None,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> ProbeResult:
    """Return the probes of ``config`` trained on ``store``, written to the results store ``out``.

    ``workers`` 0 runs the dask graph in this process; N > 0 starts a LocalCluster of N worker
    processes; ``scheduler`` (tcp://HOST:PORT) uses an existing dask.distributed cluster. A
    results store left by a killed run with the same settings is resumed: finished tasks are
    not recomputed. ``out`` defaults to ``<store>.probes.zarr`` beside the store.
    """
    if workers < 0:
        raise UsageError(f"Expected --workers 0 (in-process) or more. Got {workers}.")
    if workers and scheduler:
        raise UsageError("Expected either --workers or --scheduler. Got both; pass one.")
    plan, _, _ = prepare(store, config, out)
    todo = pending(plan)
    execute(plan, todo, workers=workers, scheduler=scheduler, progress=progress)
    return ProbeResult(plan.out)


def _tasks(plan: Plan, todo: list[tuple[int, int]]) -> list[Any]:
    import dask

    from priorscope.engine.probes.task import run_task

    # Keys unique to this run: two runs on one shared scheduler must not share results.
    token = hashlib.sha256(
        json.dumps([plan.out, identity(plan)], sort_keys=True, default=str).encode()
    ).hexdigest()[:12]
    # traverse=False: the plan is one opaque object, shipped to each worker once.
    shared = dask.delayed(plan, traverse=False, name=f"probe-plan-{token}")
    return [
        dask.delayed(run_task, pure=True)(shared, li, ti, dask_key_name=f"probe-{token}-{li}-{ti}")
        for li, ti in todo
    ]


def execute(
    plan: Plan,
    todo: list[tuple[int, int]],
    *,
    workers: int = 0,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> None:
    """Run the tasks ``todo`` in-process, on a new LocalCluster, or on the cluster at ``scheduler``."""
    if not todo:
        return
    tasks = _tasks(plan, todo)
    if not workers and not scheduler:
        import dask
        from dask.callbacks import Callback

        count = [0]
        keys = {t.key for t in tasks}

        def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if key in keys and progress is not None:
                count[0] += 1
                progress(count[0], len(tasks))

        with Callback(posttask=posttask):
            dask.compute(*tasks, scheduler="sync")
        return
    with _client(workers, scheduler) as client:
        from distributed import as_completed

        futures = client.compute(tasks)
        for i, future in enumerate(as_completed(futures), start=1):
            future.result()  # re-raises a task's error here
            if progress is not None:
                progress(i, len(tasks))


@contextlib.contextmanager
def _client(workers: int, scheduler: str | None) -> Iterator[Any]:
    import logging

    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise UsageError(
                f"Expected a dask scheduler at {scheduler!r}. Got no answer ({exc}). Start one "
                "with 'dask scheduler' or use --workers N for a local cluster."
            ) from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
