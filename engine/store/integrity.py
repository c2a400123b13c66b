"""Chunk-level and attribute-level integrity of a capture store (``store verify``).

Schema 2 stores carry a CRC-32C in every chunk (inner chunks of shards included), so reading
a chunk proves its bytes. What a read cannot prove is a chunk that is missing (Zarr returns
the fill value) or cut short where the codec never looks: those are checked against the
exact size each committed chunk must have. The attributes that describe the arrays are
fingerprinted at creation, so an edit of candidates, layers, conditions or d_model shows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from priorscope.engine.store import schema

FINGERPRINT_ATTR = "attrs_sha256"
# The attributes that decide how every array is read; a later edit of any one changes meaning.
FINGERPRINTED = ("conditions", "layers", "reductions", "candidates", "hidden_dtype", "layout")
# Arrays whose committed chunks must exist: their fill value is never a legitimate value.
MUST_EXIST = (schema.HIDDEN, schema.OUT_CAND_LOGPROB, schema.UNEMBED, f"{schema.EX}/id")
# Read in full by the cheap verify (small); hidden and full-sequence values only with --deep.
BIG = (schema.HIDDEN, schema.FULLSEQ_VALUES)


def fingerprint(attrs: Mapping[str, Any]) -> str:
    """Return the sha256 of the attributes that describe the arrays (canonical JSON)."""
    sub = {k: attrs.get(k) for k in FINGERPRINTED}
    text = json.dumps(sub, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def attribute_problems(group: zarr.Group, attrs: Mapping[str, Any]) -> list[str]:
    """Return problems of the attributes checked against each other and against the arrays."""
    problems = []
    recorded = attrs.get(FINGERPRINT_ATTR)
    if recorded and recorded != fingerprint(attrs):
        problems.append(
            "group attributes (conditions, layers, reductions, candidates, layout) were "
            "edited after the store was created: their fingerprint no longer matches"
        )
    if attrs.get("answers_only"):
        return problems
    d_model = (attrs.get("layout") or {}).get("d_model")
    model_d = (attrs.get("model") or {}).get("d_model")
    if model_d is not None and d_model is not None and int(model_d) != int(d_model):
        problems.append(f"attribute model.d_model={model_d} but layout.d_model={d_model}")
    for path in (schema.HIDDEN, schema.UNEMBED):
        node = group.get(path)
        if isinstance(node, zarr.Array) and d_model is not None and node.shape[-1] != d_model:
            problems.append(f"{path} has d_model {node.shape[-1]}, attributes say {d_model}")
    layers = attrs.get("layers") or []
    n_layers = (attrs.get("model") or {}).get("num_layers")
    if n_layers is not None and any(not -1 <= int(v) < int(n_layers) for v in layers):
        problems.append(f"attribute layers {layers} outside the model's -1..{int(n_layers) - 1}")
    if len(set(layers)) != len(layers):
        problems.append(f"attribute layers {layers} repeats a layer")
    names = [c.get("name") for c in attrs.get("conditions") or [] if isinstance(c, dict)]
    if len(set(names)) != len(names):
        problems.append(f"condition names {names} repeat a name")
    return problems


def _expected_nbytes(arr: zarr.Array) -> int | None:
    """Return the stored size of one full chunk (shard) of ``arr``; None when variable."""
    if arr.dtype.kind in "OTUS" or arr.dtype.itemsize == 0:
        return None
    codecs = arr.metadata.codecs  # type: ignore[union-attr]
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    def chain_size(chain: Any, shape: tuple[int, ...]) -> int | None:
        size = int(np.prod(shape)) * arr.dtype.itemsize
        for c in chain:
            if isinstance(c, Crc32cCodec):
                size += 4
            elif not isinstance(c, BytesCodec):
                return None  # a compressor: size unknown in advance
        return size

    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        shard = codecs[0]
        inner = chain_size(shard.codecs, tuple(shard.chunk_shape))
        if inner is None or arr.shards is None:
            return None
        n = int(np.prod([s // c for s, c in zip(arr.shards, shard.chunk_shape, strict=True)]))
        return n * inner + 16 * n + 4
    return chain_size(codecs, tuple(arr.chunks))


def chunk_problems(root: Path, group: zarr.Group, done: np.ndarray) -> list[str]:
    """Return one line per committed chunk that is missing or has the wrong size (local only)."""
    problems = []
    rows = np.flatnonzero(done)
    for path in MUST_EXIST + tuple(p for p in schema.DIMS if p not in MUST_EXIST):
        arr = group.get(path)
        if not isinstance(arr, zarr.Array):
            continue
        step = (arr.shards or arr.chunks)[0]
        dims: tuple[str | None, ...] = getattr(arr.metadata, "dimension_names", None) or ()
        per_row = bool(dims) and dims[0] == "example"
        n_blocks = -(-arr.shape[0] // step) if arr.ndim else 1
        blocks = sorted({int(r) // step for r in rows}) if per_row else range(n_blocks)
        want = _expected_nbytes(arr)
        for b in blocks:
            coords = (b,) + (0,) * (arr.ndim - 1)
            f = root / path / arr.metadata.encode_chunk_key(coords)
            if not f.is_file():
                if path in MUST_EXIST:
                    problems.append(f"chunk {path}/{f.relative_to(root / path)} is missing")
                continue
            size = f.stat().st_size
            if want is not None and size != want:
                problems.append(
                    f"chunk {path}/{f.relative_to(root / path)} holds {size} bytes, "
                    f"expected {want} (truncated or overwritten)"
                )
    return problems


def read_problems(group: zarr.Group, *, deep: bool) -> list[str]:
    """Return one line per array that cannot be read (checksum mismatch, undecodable bytes)."""
    problems = []
    for path in schema.DIMS:
        arr = group.get(path)
        if not isinstance(arr, zarr.Array) or (path in BIG and not deep):
            continue
        step = (arr.shards or arr.chunks)[0] if arr.ndim else 1
        for start in range(0, max(arr.shape[0] if arr.ndim else 1, 1), step):
            try:
                arr[start : start + step] if arr.ndim else arr[...]
            except Exception as exc:  # any codec failure is data damage: say which chunk
                problems.append(
                    f"{path} rows {start}-{start + step - 1} cannot be read "
                    f"({type(exc).__name__}: {str(exc)[:120]})"
                )
    return problems
