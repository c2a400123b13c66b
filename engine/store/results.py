"""Results stores: the Zarr stores probes, patching and the lens write, through one handle.

A results store holds one declared group (a :class:`GroupSpec` of store kind ``probes``,
``patch`` or ``lens``). It records that spec and the writer's configuration in its attributes,
so that a resume with another configuration, or a store of another kind, is refused instead of
silently mixed, and so that ``info`` can describe the store without importing its writer.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from priorscope.engine.errors import ConfigMismatchError, StoreError, UsageError
from priorscope.engine.store import backend
from priorscope.engine.store.groups import STORE_KINDS, GroupSpec, register_group
from priorscope.engine.store.layout import config_differences, new_array

RESULTS_SCHEMA_VERSION = 1


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class ResultStore:
    """One results store: the arrays of ``spec``, its attributes, an xarray view."""

    def __init__(self, path: str, spec: GroupSpec, group: zarr.Group, writable: bool) -> None:
        self.path, self.spec, self._group, self.writable = path, spec, group, writable

    def __repr__(self) -> str:
        return (
            f"ResultStore({self.path!r}, group={self.spec.name!r}, kind={self.spec.store_kind!r})"
        )

    @property
    def attrs(self) -> dict[str, Any]:
        """Return the store's attributes as they are now on disk."""
        return dict(self._group.attrs)

    def _check_writable(self) -> None:
        if not self.writable:
            raise UsageError(
                f"Expected a results store opened for writing. Got {self.path!r} opened with "
                "mode='r'. Open it with mode='a'."
            )

    def update_attrs(self, values: dict[str, Any]) -> None:
        """Merge ``values`` (JSON-able) into the store's attributes."""
        self._check_writable()
        self._group.attrs.update(_json_safe(values))

    def has(self, name: str) -> bool:
        """Return whether the declared array ``name`` exists yet."""
        return self.spec.path(name) in self._group

    def require_array(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: Any,
        chunks: tuple[int, ...],
        fill_value: Any = None,
    ) -> None:
        """Create the declared array ``name`` (dims from the spec), or check the existing one."""
        spec = self.spec.array(name)
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(spec.dims):
            raise UsageError(
                f"Expected {len(spec.dims)} dimensions {spec.dims} for array {name!r}. Got "
                f"shape {shape} instead."
            )
        if not spec.accepts(np.dtype(dtype)):
            raise UsageError(f"Expected dtype {spec.dtype} for array {name!r}. Got {dtype}.")
        path = self.spec.path(name)
        if path in self._group:
            arr = backend.node(self._group, path)
            if tuple(arr.shape) != shape:
                raise StoreError(
                    f"Expected array {name!r} of shape {shape} in {self.path!r}. Got "
                    f"{tuple(arr.shape)}: the store was started with other settings. Use "
                    "another output path."
                )
            return
        self._check_writable()
        new_array(self._group, path, shape, dtype, tuple(chunks), spec.dims, fill_value=fill_value)

    def write(self, name: str, index: Any, values: Any) -> None:
        """Write ``values`` at ``index`` of array ``name``."""
        self._check_writable()
        backend.node(self._group, self.spec.path(name))[index] = values

    def read(self, name: str, index: Any = ...) -> np.ndarray:
        """Return ``index`` of array ``name`` as numpy."""
        return backend.read(backend.node(self._group, self.spec.path(name)), index)

    def set_coords(self, dim: str, values: list[Any]) -> None:
        """Record coordinate labels of dimension ``dim`` (used by :meth:`to_xarray`)."""
        coords = dict(self.attrs.get("coords", {}))
        coords[dim] = list(values)
        self.update_attrs({"coords": coords})

    def to_xarray(self) -> Any:
        """Return every written array as an xarray Dataset with its dims and recorded coords."""
        import dask.array as da
        import xarray as xr

        data = {}
        for spec in self.spec.arrays:
            if self.has(spec.name):
                arr = backend.node(self._group, self.spec.path(spec.name))
                data[spec.name] = (spec.dims, da.from_zarr(arr))
        coords = {}
        sizes = {
            d: n for _, (dims, arr) in data.items() for d, n in zip(dims, arr.shape, strict=True)
        }
        for dim, labels in self.attrs.get("coords", {}).items():
            if sizes.get(dim) == len(labels):
                coords[dim] = labels
        return xr.Dataset(data, coords=coords, attrs=self.attrs)


def _check_kind(path: str, spec: GroupSpec, attrs: dict[str, Any]) -> None:
    kind, name = attrs.get("store_kind"), attrs.get("group_spec", {}).get("name")
    if kind != spec.store_kind or name != spec.name:
        got = "a capture store or another Zarr group" if kind is None else f"{kind} group {name!r}"
        raise StoreError(
            f"Expected a {spec.store_kind} results store with group {spec.name!r} at {path!r}. "
            f"Got {got} instead. Choose another output path."
        )


def _check_config(path: str, recorded: dict[str, Any], wanted: dict[str, Any] | None) -> None:
    if wanted is None or "config" not in wanted:
        return
    diffs = config_differences(recorded.get("config") or {}, _json_safe(wanted["config"]))
    if diffs:
        raise ConfigMismatchError(
            f"Expected the configuration recorded in {path!r} to resume into it. Got a "
            "different one: " + "; ".join(diffs) + ". Use another output path, or repeat the "
            "original settings."
        )


def results_path(store_path: str | Path, kind: str) -> str:
    """Return where a results store of ``kind`` lives by default: ``<store>.<kind>.zarr`` beside."""
    text = str(store_path)
    if backend.is_url(text):
        return text.rstrip("/").removesuffix(".zarr") + f".{kind}.zarr"
    path = Path(text)
    return str(path.with_name(path.name.removesuffix(".zarr") + f".{kind}.zarr"))


def results_info(path: str | Path) -> dict[str, Any] | None:
    """Return what the results store at ``path`` recorded (kind, group spec, attrs), else None.

    Needs no import of the module that wrote it: the store carries its own declaration.
    """
    if not backend.exists(path):
        return None
    attrs = dict(backend.open_group(path, mode="r").attrs)
    if "store_kind" not in attrs or "group_spec" not in attrs:
        return None
    spec = GroupSpec.from_json(attrs["group_spec"])
    return {"path": str(path), "store_kind": spec.store_kind, "group": spec, "attrs": attrs}


def find_results(store_path: str | Path) -> dict[str, dict[str, Any]]:
    """Return {kind: results_info} of the results stores found at their default paths."""
    found = {}
    for kind in STORE_KINDS:
        if kind == "capture":
            continue
        described = results_info(results_path(store_path, kind))
        if described is not None and described["store_kind"] == kind:
            found[kind] = described
    return found


def open_results(
    path: str | Path, spec: GroupSpec, mode: str = "a", attrs: dict[str, Any] | None = None
) -> ResultStore:
    """Return the results store at ``path``: created (mode 'a') or reopened (modes 'a', 'r').

    Refuses a store of another kind or group, and one whose recorded ``attrs['config']``
    differs from ``attrs['config']`` (resume safety). New stores record ``attrs``.
    """
    if mode not in ("a", "r"):
        raise UsageError(f"Expected mode 'a' or 'r'. Got {mode!r} instead.")
    register_group(spec)
    where = str(path)
    if backend.exists(path) or mode == "r":
        group = backend.open_group(path, mode="r" if mode == "r" else "r+")
        recorded = dict(group.attrs)
        _check_kind(where, spec, recorded)
        _check_config(where, recorded, attrs)
        return ResultStore(where, spec, group, writable=mode == "a")
    group = backend.open_group(path, mode="w")
    group.attrs.update(
        _json_safe(
            {
                **(attrs or {}),
                "results_schema_version": RESULTS_SCHEMA_VERSION,
                "store_kind": spec.store_kind,
                "group_spec": spec.to_json(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
    )
    return ResultStore(where, spec, group, writable=True)
