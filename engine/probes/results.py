"""The probes results store and :class:`ProbeResult`, its reader.

A probe run writes one Zarr store (through ``engine/store``'s :func:`open_results`, declared as
the ``probes`` group) with one value per cell (target, kind, train condition, test condition,
layer, reduction). A task (one layer, one training condition) writes whole chunks of every
array and then its ``done`` flag, so tasks in different processes never touch one file and a
killed run resumes by skipping the (train, layer) pairs already done.

Dimensions: ``target``, ``kind`` (ridge, logistic, mlp), ``train`` and ``test`` (conditions),
``layer`` (store layers, with their ``site`` names beside them), ``reduction`` (the site
reduction: last, image_mean, text_mean), ``fold``, ``perm``, ``linear_kind`` (ridge,
logistic), ``class`` (a target's classes, in order; padded) and ``d_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.errors import StoreError, UsageError
from priorscope.engine.store import ArraySpec, GroupSpec, open_results, register_group

CELL = ("target", "kind", "train", "test", "layer", "reduction")
FIT = ("target", "kind", "train", "layer", "reduction", "fold")
LINEAR = ("target", "linear_kind", "train", "layer", "reduction", "class")

# name: (dims, dtype, what it holds) -- the doc the results store and `probe info` show.
ARRAYS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "accuracy": (CELL, "float64", "held-out accuracy, all folds pooled"),
    "ci_low": (CELL, "float64", "95% Wilson interval of accuracy, lower end"),
    "ci_high": (CELL, "float64", "95% Wilson interval of accuracy, upper end"),
    "log_loss": (CELL, "float64", "mean held-out -log p(true class) (nan for ridge)"),
    "n_test": (CELL, "int64", "held-out labelled examples"),
    "n_train": (CELL, "float64", "labelled training examples per fold (mean)"),
    "chance": (CELL, "float64", "1 / number of classes"),
    "majority": (CELL, "float64", "accuracy of predicting each training fold's majority class"),
    "control_accuracy": (CELL, "float64", "accuracy on the Hewitt & Liang control task"),
    "selectivity": (CELL, "float64", "accuracy - control_accuracy"),
    "perm_mean": (CELL, "float64", "mean accuracy of the permutation-null probes"),
    "perm_p": (CELL, "float64", "permutation p-value (1 + #null >= acc) / (1 + #null)"),
    "perm_accuracy": ((*CELL, "perm"), "float64", "accuracy of each permutation-null probe"),
    "reg": (FIT, "float64", "chosen regularisation: ridge alpha, logistic C, MLP weight decay"),
    "hidden": (FIT, "int64", "chosen MLP hidden size (0 for linear kinds)"),
    "iterations": (FIT, "int64", "solver iterations (logistic) or epochs (MLP); 0 for ridge"),
    "weights": ((*LINEAR, "d_model"), "float32", "linear probe weights on raw features, fold mean"),
    "intercept": (LINEAR, "float32", "linear probe intercepts on raw features, fold mean"),
    "done": (("train", "layer"), "bool", "the cells of this (train, layer) are written"),
}

PROBES_GROUP = register_group(
    GroupSpec(
        name="probes",
        owner="priorscope.engine.probes",
        arrays=tuple(
            ArraySpec(name, dims, dtype, required=name in ("accuracy", "done"))
            for name, (dims, dtype, _) in ARRAYS.items()
        ),
        description="Layer-wise probes: one value per (target, kind, train, test, layer, reduction) cell.",
        store_kind="probes",
    )
)


def create_arrays(rs: Any, shape: dict[str, int], chunk: dict[str, int]) -> None:
    """Create every array of a run (sizes per dimension name ``shape``, chunks ``chunk``)."""
    for name, (dims, dtype, _) in ARRAYS.items():
        fill: Any = False if dtype == "bool" else (0 if dtype == "int64" else float("nan"))
        rs.require_array(
            name,
            tuple(shape[d] for d in dims),
            dtype,
            tuple(chunk.get(d, shape[d]) for d in dims),
            fill_value=fill,
        )


@dataclass(frozen=True)
class ProbeResult:
    """A finished (or partly finished) probe run, read from its results store at ``path``."""

    path: str

    def _store(self) -> Any:
        return open_results(self.path, PROBES_GROUP, mode="r")

    @property
    def attrs(self) -> dict[str, Any]:
        return self._store().attrs

    @property
    def coords(self) -> dict[str, list[Any]]:
        return dict(self.attrs.get("coords", {}))

    @property
    def targets(self) -> list[dict[str, Any]]:
        """Return per target: classes, pooled and dropped classes, unlabelled count, note."""
        return list(self.attrs.get("targets", []))

    def read(self, name: str) -> np.ndarray:
        """Return array ``name`` as numpy."""
        return self._store().read(name)

    def done(self) -> np.ndarray:
        """Return [train, layer] bool: which (train, layer) tasks are written."""
        return self.read("done").astype(bool)

    def to_xarray(self) -> Any:
        """Return every array as an xarray Dataset with named dimensions and coordinates."""
        ds = self._store().to_xarray()
        if "site" in self.attrs and "layer" in ds.dims:
            ds = ds.assign_coords(site=("layer", list(self.attrs["site"])))
        return ds

    def _cells(self, name: str, **sel: Any) -> Any:
        ds = self.to_xarray()
        if name not in ds:
            raise StoreError(
                f"Expected array {name!r} in {self.path!r}. Got none; the run wrote no cells."
            )
        da = ds[name]
        for dim, value in sel.items():
            if value is None:
                continue
            if dim not in da.dims:
                raise UsageError(f"Expected one of the dimensions {list(da.dims)}. Got {dim!r}.")
            da = da.sel({dim: value})
        return da.load()

    def accuracy(self, **sel: Any) -> Any:
        """Return held-out accuracy as a DataArray, optionally selected (``target='gold'``...)."""
        return self._cells("accuracy", **sel)

    def selectivity(self, target: str | None = None, kind: str | None = None, **sel: Any) -> Any:
        """Return accuracy - control-task accuracy (nan where the run had no controls)."""
        return self._cells("selectivity", target=target, kind=kind, **sel)

    def transfer(
        self, target: str, kind: str, train: str, reduction: str, relative: bool = False
    ) -> Any:
        """Return accuracy [test, layer] of probes trained on ``train``: the probe decay curve.

        With ``relative`` each test condition's accuracy is divided by the accuracy on the
        training condition itself (1.0 where the probe transfers fully).
        """
        da = self._cells("accuracy", target=target, kind=kind, train=train, reduction=reduction)
        if relative:
            da = da / da.sel(test=train)
        return da


def default_out(store_path: str) -> str:
    """Return the default results path for a store: ``<store>.probes.zarr`` beside it."""
    if "://" in store_path:
        return store_path.rstrip("/") + ".probes.zarr"
    path = Path(store_path)
    return str(path.with_name(path.name.removesuffix(".zarr") + ".probes.zarr"))
