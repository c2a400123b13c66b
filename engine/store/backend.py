"""The one place that opens a store's Zarr group: read-only for analyses, writable for writers.

Every other module, inside ``engine/store`` or outside it, goes through these functions, so that
errors read the same everywhere and a URL (any fsspec protocol zarr supports) works wherever a
local path does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from priorscope.engine.errors import StoreError


def is_url(path: str | Path) -> bool:
    """Return whether ``path`` names remote storage (``s3://...``, ``memory://...``)."""
    return "://" in str(path)


def exists(path: str | Path) -> bool:
    """Return whether a Zarr group exists at ``path`` (its zarr.json is there)."""
    if not is_url(path):
        return (Path(path) / "zarr.json").exists()
    fs, root = url_to_fs(path)
    return bool(fs.exists(f"{root.rstrip('/')}/zarr.json"))


def url_to_fs(path: str | Path) -> tuple[Any, str]:
    """Return (fsspec filesystem, path inside it) of a URL; credentials come from its config."""
    import fsspec

    return fsspec.core.url_to_fs(str(path))


def children(path: str | Path) -> list[str]:
    """Return the names directly under a folder or URL prefix ([] when there is nothing)."""
    if not is_url(path):
        p = Path(path)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
    fs, root = url_to_fs(path)
    if not fs.exists(root):
        return []
    return sorted(str(c).rstrip("/").rsplit("/", 1)[-1] for c in fs.ls(root, detail=False))


def stored_bytes(path: str | Path) -> int:
    """Return the bytes of every file (local) or object (URL) under ``path``."""
    if not is_url(path):
        return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    fs, root = url_to_fs(path)
    return int(fs.du(root, total=True))


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    """Return the root group at ``path`` (mode r, r+, a or w); raise StoreError if unreadable."""
    where = str(path)
    if mode in ("r", "r+") and not is_url(path):
        p = Path(path)
        if not p.exists():
            raise StoreError(
                f"Expected a priorscope store at {where!r}. Got no such path instead. "
                "Create one with 'priorscope capture'."
            )
        if not (p / "zarr.json").exists():
            raise StoreError(
                f"Expected a priorscope store (a Zarr v3 group) at {where!r}. Got a folder "
                "without zarr.json. Pass the --out folder of a finished or running capture."
            )
    try:
        return zarr.open_group(where, mode=mode)  # type: ignore[arg-type]
    except StoreError:
        raise
    except Exception as exc:  # zarr raises several types for what is not a readable group
        raise StoreError(
            f"Expected a Zarr v3 group at {where!r}. Got an unreadable one instead "
            f"({type(exc).__name__}: {exc}). Run 'priorscope store verify' on it, or re-capture."
        ) from None


def node(group: zarr.Group, name: str) -> zarr.Array:
    """Return array ``name`` of ``group``; raise StoreError when it is missing or unreadable."""
    try:
        found = group[name]
    except KeyError:
        raise StoreError(
            f"Expected array {name!r} in the store {group.store_path}. Got nothing there; the "
            "store is incomplete or from another priorscope version. Run 'priorscope store verify'."
        ) from None
    except (ValueError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"Expected readable metadata for {name!r} in {group.store_path}. Got {exc}. "
            "Run 'priorscope store verify'."
        ) from None
    if not isinstance(found, zarr.Array):
        raise StoreError(f"Expected {name!r} to be an array in {group.store_path}. Got a group.")
    return found


def read(arr: zarr.Array, key: Any = ...) -> np.ndarray:
    """Return ``arr[key]`` as numpy; a damaged chunk raises StoreError naming the array."""
    try:
        return np.asarray(arr[key])
    except Exception as exc:  # truncated or corrupt chunk files fail in several codec layers
        raise StoreError(
            f"Expected readable chunks in {arr.path!r} of {arr.store_path}. Got "
            f"{type(exc).__name__}: {exc}. Run 'priorscope store verify'; re-run the capture "
            "command to rewrite uncommitted shards."
        ) from None
