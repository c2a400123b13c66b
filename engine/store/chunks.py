"""Chunk-wise reads of hidden states for algorithms that run per chunk, in-process or on dask.

A :class:`HiddenChunk` names one shard of one (layer, condition): small and picklable, so a
dask task can carry it to a worker process, which opens the store there and reads only that
inner chunk. The commit policy is applied per chunk, with the mask read before the values.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
import zarr

from priorscope.engine.errors import did_you_mean
from priorscope.engine.store import backend, schema, skips
from priorscope.engine.store.dtypes import BF16_ATTR, decode


class HiddenChunk(NamedTuple):
    """One shard [start, stop) of the hidden states at store layer ``layer``, ``condition``."""

    path: str
    layer: int  # store convention: -1 is embed
    condition: str
    start: int
    stop: int


@functools.lru_cache(maxsize=8)
def _open(path: str) -> zarr.Group:
    """Return the store's group, opened once per worker process."""
    return backend.open_group(path, mode="r")


def _axis(group: zarr.Group, chunk: HiddenChunk) -> tuple[int, int]:
    """Return the (condition, layer) axis indices of ``chunk`` in the hidden array."""
    attrs: dict[str, Any] = dict(group.attrs)
    names = [c["name"] for c in attrs["conditions"]]
    layers = [int(v) for v in attrs["layers"]]
    if chunk.condition not in names:
        raise did_you_mean(chunk.condition, names, "condition")
    if chunk.layer not in layers:
        raise did_you_mean(str(chunk.layer), [str(v) for v in layers], "layer")
    return names.index(chunk.condition), layers.index(chunk.layer)


def read_hidden_chunk(
    chunk: HiddenChunk,
    *,
    include_uncommitted: bool = False,
    group: zarr.Group | None = None,
    done: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows [m] int64, values [m, reduction, d_model] float32) of one chunk.

    Only rows committed when the chunk is read are returned (all rows with
    ``include_uncommitted``); ``group`` reuses an open group instead of opening ``chunk.path``
    and ``done`` [stop - start] a commit mask the caller read already.
    """
    group = _open(chunk.path) if group is None else group
    c, layer = _axis(group, chunk)
    rows = np.arange(chunk.start, chunk.stop, dtype=np.int64)
    if not include_uncommitted:
        if done is None:
            commit = backend.node(group, schema.COMMIT_DONE)
            done = backend.read(commit, slice(chunk.start, chunk.stop))
            done = skips.visible(done, group, chunk.start)  # skipped rows hold no values
        rows = rows[np.asarray(done, dtype=bool)]
    arr = backend.node(group, schema.HIDDEN)
    if rows.size == 0:
        return rows, np.zeros((0, *arr.shape[3:]), dtype=np.float32)
    # Reading only the span of kept rows spares a shard whose tail is not written at all.
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    values = backend.read(arr, (slice(lo, hi), c, layer))
    values = decode(values, bool(arr.attrs.get(BF16_ATTR, False)))
    return rows, values[rows - lo]
