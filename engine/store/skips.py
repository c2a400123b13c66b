"""Skipped examples (``capture --on-bad skip``): the marks capture writes and readers honour.

An example whose image cannot be decoded or processed is still committed with its shard, so a
resume never retries it, but ``commit/skipped`` holds the reason and its rows hold no values
(NaN and ""). Every reader goes through :func:`visible`: committed and not skipped. A store
without the array (written before skips existed, or never needing one) has no skipped rows.
"""

from __future__ import annotations

import contextlib

import numpy as np
import zarr

from priorscope.engine.store import backend, schema


def has_skip_marks(group: zarr.Group) -> bool:
    """Return whether the store holds the optional ``commit/skipped`` array."""
    return schema.COMMIT_SKIPPED in group


def skip_reasons(group: zarr.Group, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Return the skip reasons of rows [start, stop) as an object array ("" = not skipped)."""
    n = int(backend.node(group, schema.COMMIT_DONE).shape[0])
    stop = n if stop is None else stop
    if not has_skip_marks(group):
        return np.full(max(stop - start, 0), "", dtype=object)
    values = backend.read(backend.node(group, schema.COMMIT_SKIPPED), slice(start, stop))
    return np.asarray(values, dtype=object)


def skipped_mask(group: zarr.Group, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Return [stop - start] bool: True where the example was skipped."""
    reasons = skip_reasons(group, start, stop)
    return np.array([bool(r) for r in reasons.tolist()], dtype=bool)


def visible(done: np.ndarray, group: zarr.Group, start: int = 0) -> np.ndarray:
    """Return ``done`` (a commit mask of rows start..) with skipped rows turned False."""
    done = np.asarray(done, dtype=bool)
    if not has_skip_marks(group) or not done.any():
        return done
    return done & ~skipped_mask(group, start, start + done.size)


def create_skip_array(group: zarr.Group, n_examples: int, shard_examples: int) -> None:
    """Create ``commit/skipped`` (one chunk per example shard) unless it exists already.

    Every rank may call this; whichever comes first creates the array. Its chunks follow the
    shards, so a rank writes the marks of its own shards only and never shares a file.
    """
    from priorscope.engine.store.layout import new_array

    if has_skip_marks(group):
        return
    with contextlib.suppress(zarr.errors.ContainsArrayError):  # another rank was first
        new_array(
            group,
            schema.COMMIT_SKIPPED,
            (n_examples,),
            str,
            (shard_examples,),
            schema.DIMS[schema.COMMIT_SKIPPED],
            fill_value="",
        )


def write_skip_marks(group: zarr.Group, start: int, reasons: list[str]) -> None:
    """Write the marks of one whole shard (rows start..start+len) in one chunk write."""
    arr = backend.node(group, schema.COMMIT_SKIPPED)
    arr[start : start + len(reasons)] = np.asarray(reasons, dtype=object)
