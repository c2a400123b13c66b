"""The typed per-example table of a store: ids, benchmark, category, gold answers, metadata.

The table is written once when a store is created, so a handle decodes it once and hands out
row subsets (the committed examples, or all of them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import zarr

from priorscope.engine.conditions import Condition
from priorscope.engine.errors import StoreError, did_you_mean
from priorscope.engine.store import backend, schema

# Column names a user may ask for, mapped to the ExampleTable field that holds them.
_COLUMNS = {
    "row": "rows",
    "rows": "rows",
    "id": "ids",
    "ids": "ids",
    "benchmark": "benchmark",
    "category": "category",
    "question": "question",
    "gold": "gold",
    "options": "options",
    "source_row": "source_row",
    "metric": "metric",
    "n_images": "n_images",
    "has_image": "has_image",
    "image_sha256": "image_sha256",
}


@dataclass(frozen=True)
class ExampleTable:
    """Per-example columns of a store's examples, in store order, aligned with ``rows``.

    ``rows`` [n] int64 are the store indices; ``n_uncommitted`` counts the store's rows that were
    left out because they were not committed when the table was read, ``n_skipped`` those left
    out because capture skipped them (``--on-bad skip``).
    """

    rows: np.ndarray
    ids: tuple[str, ...]
    benchmark: tuple[str, ...]
    category: tuple[str, ...]
    question: tuple[str, ...]
    gold: tuple[tuple[str, ...], ...]
    options: tuple[tuple[str, ...], ...]
    source_row: np.ndarray
    metadata: tuple[dict[str, Any], ...]
    n_uncommitted: int
    conditions: tuple[Condition, ...]
    n_skipped: int = 0
    # The scoring rule (data.scoring.rule), how many images the row has, whether it has any
    # (issue 16); None in every row of a store written before these columns existed.
    metric: tuple[str | None, ...] = ()
    n_images: tuple[int | None, ...] = ()
    has_image: tuple[bool | None, ...] = ()
    # The row's image identity (data.example.images_sha256; "" text-only, None: not recorded).
    image_sha256: tuple[str | None, ...] = ()

    @property
    def n(self) -> int:
        return len(self.ids)

    def metadata_keys(self) -> list[str]:
        """Return every key that occurs in some row's metadata, sorted."""
        return sorted({k for m in self.metadata for k in m})

    def column(self, name: str) -> np.ndarray:
        """Return column ``name`` [n] as an object array: a field or any metadata key.

        Rows whose metadata lacks the key hold None. Unknown names raise with a did-you-mean.
        """
        attr = _COLUMNS.get(name)
        if attr is not None:
            values = getattr(self, attr)
            out = np.empty(self.n, dtype=object)
            out[:] = list(values)
            return out
        keys = self.metadata_keys()
        if name not in keys:
            raise did_you_mean(name, sorted({*_COLUMNS, *keys}), "example column")
        out = np.empty(self.n, dtype=object)
        out[:] = [m.get(name) for m in self.metadata]
        return out

    def condition_index(self, name: str) -> int | None:
        """Return the axis index of the condition called ``name``, or None when not captured."""
        for i, cond in enumerate(self.conditions):
            if cond.name == name:
                return i
        return None

    def take(self, positions: np.ndarray) -> ExampleTable:
        """Return the table restricted to ``positions`` (indices into this table)."""
        idx = [int(i) for i in np.asarray(positions).reshape(-1)]
        picked: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                picked[f.name] = value[idx]
            elif f.name in ("n_uncommitted", "conditions", "n_skipped"):
                picked[f.name] = value
            else:
                picked[f.name] = tuple(value[i] for i in idx)
        return ExampleTable(**picked)


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


def read_example_table(
    group: zarr.Group, conditions: tuple[Condition, ...], where: str
) -> ExampleTable:
    """Return the whole example table of ``group`` (every row, committed or not)."""

    def column(name: str) -> np.ndarray:
        return backend.read(backend.node(group, f"{schema.EX}/{name}"))

    gold = _json_column(column("gold"), "examples/gold", where)
    options = _json_column(column("options"), "examples/options", where)
    metadata = _json_column(column("metadata"), "examples/metadata", where)
    ids = tuple(str(v) for v in column("id").tolist())
    filters = _filter_columns(group, len(ids))
    return ExampleTable(
        rows=np.arange(len(ids), dtype=np.int64),
        ids=ids,
        benchmark=tuple(str(v) for v in column("benchmark").tolist()),
        category=tuple(str(v) for v in column("category").tolist()),
        question=tuple(str(v) for v in column("question").tolist()),
        gold=tuple(tuple(str(a) for a in (g or ())) for g in gold),
        options=tuple(tuple(str(o) for o in (opts or ())) for opts in options),
        source_row=column("source_row").astype(np.int64),
        metadata=tuple(m or {} for m in metadata),
        n_uncommitted=0,
        conditions=conditions,
        metric=filters["metric"],
        n_images=filters["n_images"],
        has_image=filters["has_image"],
        image_sha256=filters["image_sha256"],
    )


def _filter_columns(group: zarr.Group, n: int) -> dict[str, tuple[Any, ...]]:
    """Return the optional metric, n_images, has_image and image_sha256 columns (None where
    not written)."""
    out: dict[str, tuple[Any, ...]] = {}
    for name, kind in (
        ("metric", str),
        ("n_images", int),
        ("has_image", bool),
        ("image_sha256", str),
    ):
        path = f"{schema.EX}/{name}"
        if path in group:
            out[name] = tuple(kind(v) for v in backend.read(backend.node(group, path)).tolist())
        else:
            out[name] = (None,) * n
    return out
