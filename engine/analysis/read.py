"""Reading helpers shared by the analyses: the store's small per-example tables and its outputs.

Only committed examples (``commit/done`` True) are analysed: a store still being written, or one
whose capture was interrupted, holds rows that are not final yet. Their count is kept so that a
report can say how many were left out instead of silently dropping them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from priorscope.engine.conditions import Condition
from priorscope.engine.errors import StoreError
from priorscope.engine.store import schema


@dataclass(frozen=True)
class StoreTables:
    """The per-example tables of the committed examples of a store, in store order.

    ``rows`` are the store row indices of these examples (shape [n]); every other sequence is
    aligned with it. ``n_uncommitted`` counts the rows left out because they were not committed.
    """

    path: Path
    attrs: dict[str, Any]
    conditions: tuple[Condition, ...]
    rows: np.ndarray
    ids: tuple[str, ...]
    benchmark: tuple[str, ...]
    category: tuple[str, ...]
    question: tuple[str, ...]
    gold: tuple[tuple[str, ...], ...]
    options: tuple[tuple[str, ...], ...]
    source_row: np.ndarray
    n_uncommitted: int
    metadata: tuple[dict[str, Any], ...] = field(default=())

    @property
    def n(self) -> int:
        return len(self.ids)

    def condition_index(self, name: str) -> int | None:
        """Return the axis index of the condition called ``name``, or None when not captured."""
        for i, cond in enumerate(self.conditions):
            if cond.name == name:
                return i
        return None


def open_store(path: str | Path) -> zarr.Group:
    """Return the store's root group opened read-only; raise StoreError when it is not one."""
    p = Path(path)
    if not p.exists():
        raise StoreError(
            f"Expected a priorscope store at {str(p)!r}. Got no such path instead. "
            "Create one with 'priorscope capture'."
        )
    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # zarr raises several types for a folder that is not a group
        raise StoreError(
            f"Expected a Zarr v3 group at {str(p)!r}. Got an unreadable folder instead ({exc}). "
            "Pass the folder 'priorscope capture --out' wrote."
        ) from None
    version = group.attrs.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        raise StoreError(
            f"Expected store schema_version {schema.SCHEMA_VERSION} in {str(p)!r}. "
            f"Got {version!r} instead. Re-capture with this priorscope version."
        )
    for name in (schema.OUT_SCORE, schema.OUT_ANSWER, schema.OUT_EXTRACTED, f"{schema.EX}/id"):
        if name not in group:
            raise StoreError(
                f"Expected array {name!r} in store {str(p)!r}. Got a store without it. "
                "The capture that wrote it did not finish its setup; run 'priorscope store verify'."
            )
    return group


def _conditions(attrs: dict[str, Any], where: str) -> tuple[Condition, ...]:
    """Return the conditions recorded in the group attributes, in axis order."""
    raw = attrs.get("conditions")
    if not raw:
        raise StoreError(
            f"Expected attribute 'conditions' in store {where!r}. Got none. "
            "The store was not written by priorscope capture."
        )
    return tuple(Condition.from_json(c) for c in raw)


def _json_column(values: np.ndarray, name: str, where: str) -> list[Any]:
    """Return the JSON-decoded values of a string column; raise StoreError naming the row."""
    out = []
    for row, text in enumerate(values.tolist()):
        try:
            out.append(json.loads(text) if text else None)
        except json.JSONDecodeError:
            raise StoreError(
                f"Expected JSON in {name}[{row}] of store {where!r}. Got {text[:60]!r} instead. "
                "Run 'priorscope store verify'."
            ) from None
    return out


def read_array(group: zarr.Group, name: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Return array ``name`` of the store as numpy (only ``rows`` along axis 0 when given)."""
    arr = group[name]
    if not isinstance(arr, zarr.Array):
        raise StoreError(
            f"Expected {name!r} to be an array in the store. Got a group instead. "
            "Run 'priorscope store verify'."
        )
    values = np.asarray(arr[...])
    return values if rows is None else values[rows]


def committed_rows(group: zarr.Group) -> tuple[np.ndarray, int]:
    """Return (indices of committed rows [n], count of uncommitted rows)."""
    n_total = len(read_array(group, f"{schema.EX}/id"))
    if schema.COMMIT_DONE not in group:
        # Stores written outside capture (tests, conversions) carry no commit log: all are final.
        return np.arange(n_total), 0
    done = read_array(group, schema.COMMIT_DONE).astype(bool)
    rows = np.flatnonzero(done)
    return rows, n_total - len(rows)


def read_tables(path: str | Path) -> StoreTables:
    """Return the per-example tables of the committed examples of the store at ``path``."""
    group = open_store(path)
    where = str(path)
    rows, n_uncommitted = committed_rows(group)

    def column(name: str) -> np.ndarray:
        key = f"{schema.EX}/{name}"
        if key not in group:
            raise StoreError(
                f"Expected array {key!r} in store {where!r}. Got a store without it. "
                "Run 'priorscope store verify'."
            )
        return read_array(group, key, rows)

    gold = _json_column(column("gold"), "examples/gold", where)
    options = _json_column(column("options"), "examples/options", where)
    key_meta = f"{schema.EX}/metadata"
    metadata = (
        _json_column(read_array(group, key_meta, rows), key_meta, where)
        if key_meta in group
        else [{} for _ in rows]
    )
    key_src = f"{schema.EX}/source_row"
    source_row = (
        read_array(group, key_src, rows).astype(np.int64)
        if key_src in group
        else np.full(len(rows), -1, dtype=np.int64)
    )
    attrs = dict(group.attrs)
    return StoreTables(
        path=Path(path),
        attrs=attrs,
        conditions=_conditions(attrs, where),
        rows=rows,
        ids=tuple(str(v) for v in column("id").tolist()),
        benchmark=tuple(str(v) for v in column("benchmark").tolist()),
        category=tuple(str(v) for v in column("category").tolist()),
        question=tuple(str(v) for v in column("question").tolist()),
        gold=tuple(tuple(str(a) for a in (g or ())) for g in gold),
        options=tuple(tuple(str(o) for o in (o_ or ())) for o_ in options),
        source_row=source_row,
        n_uncommitted=n_uncommitted,
        metadata=tuple(m or {} for m in metadata),
    )


@dataclass(frozen=True)
class Outputs:
    """Per-(example, condition) outputs of the committed rows as dask arrays, each [n, C]."""

    score: Any
    answer: Any
    extracted: Any


def read_outputs(path: str | Path, rows: np.ndarray, *, chunk_rows: int | None = None) -> Outputs:
    """Return lazy dask views of outputs/score, answer and extracted restricted to ``rows``.

    ``chunk_rows`` re-chunks along the example axis (None keeps the store's chunks), so a store
    of any size is read one block of examples at a time.
    """
    import dask.array as da

    group = open_store(path)

    def lazy(name: str) -> Any:
        arr = da.from_zarr(group[name])
        if chunk_rows is not None:
            arr = arr.rechunk({0: chunk_rows})
        if len(rows) == arr.shape[0] and np.array_equal(rows, np.arange(arr.shape[0])):
            return arr
        return arr[rows]

    return Outputs(
        score=lazy(schema.OUT_SCORE),
        answer=lazy(schema.OUT_ANSWER),
        extracted=lazy(schema.OUT_EXTRACTED),
    )


def finite_or_none(x: float) -> float | None:
    """Return ``x`` as a plain float, or None when it is nan or infinite (for JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None
