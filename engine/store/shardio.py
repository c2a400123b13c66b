"""Write whole Zarr shards in one file write, bypassing zarr's per-inner-chunk encoding loop.

zarr-python 3.1 encodes a shard's inner chunks one by one through its async pipeline; with the
hundreds of (condition, layer) inner chunks of a ``hidden`` shard that costs several times the
disk write itself. For the codec chains priorscope creates (sharding with raw little-endian
``bytes`` inner chunks, each followed by its ``crc32c`` since schema version 2 or bare before,
and a ``bytes`` + ``crc32c`` index at the end) a complete shard is simple to lay out exactly as
the sharding specification defines it: inner chunks back to back, then the index of (offset,
nbytes) uint64 pairs in C order of the inner-chunk grid, then the CRC-32C of the index. One
transposing copy produces every chunk's bytes in place. Any other layout, or a partial (edge)
shard, falls back to zarr's own writer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr


def _plain_sharding(arr: zarr.Array) -> Any | None:
    """Return the sharding codec when it is the plain layout this module writes, else None."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation

    codecs = arr.metadata.codecs  # type: ignore[union-attr]
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    shard = codecs[0]
    inner_ok = isinstance(shard.codecs[0], BytesCodec) and (
        len(shard.codecs) == 1
        or (len(shard.codecs) == 2 and isinstance(shard.codecs[1], Crc32cCodec))
    )
    index_ok = (
        len(shard.index_codecs) == 2
        and isinstance(shard.index_codecs[0], BytesCodec)
        and isinstance(shard.index_codecs[1], Crc32cCodec)
    )
    # Big-endian bytes codecs would need a byte swap; only little (or no) endianness is plain.
    little = (
        inner_ok
        and index_ok
        and all(
            getattr(getattr(c, "endian", None), "value", "little") == "little"
            for c in (shard.codecs[0], shard.index_codecs[0])
        )
    )
    at_end = shard.index_location == ShardingCodecIndexLocation.end
    return shard if inner_ok and index_ok and little and at_end else None


def encode_shard(
    data: np.ndarray, chunk_shape: tuple[int, ...], *, chunk_crc: bool = True
) -> np.ndarray:
    """Return the bytes (uint8) of a complete shard of ``data`` cut into ``chunk_shape`` chunks.

    With ``chunk_crc`` every inner chunk is followed by the little-endian CRC-32C of its bytes
    (the inner chain ``bytes`` + ``crc32c``); without, inner chunks are bare (schema 1 stores).
    """
    import google_crc32c

    grid = [s // c for s, c in zip(data.shape, chunk_shape, strict=True)]
    nd = data.ndim
    split: list[int] = []
    for g, c in zip(grid, chunk_shape, strict=True):
        split += [g, c]
    # [g0, c0, g1, c1, ...] -> [g0, g1, ..., c0, c1, ...]: each inner chunk becomes contiguous.
    order = [2 * i for i in range(nd)] + [2 * i + 1 for i in range(nd)]
    tiled = data.reshape(split).transpose(order)
    n_chunks = int(np.prod(grid))
    raw_bytes = int(np.prod(chunk_shape)) * data.dtype.itemsize
    chunk_bytes = raw_bytes + (4 if chunk_crc else 0)
    payload = n_chunks * chunk_bytes
    out = np.empty(payload + 16 * n_chunks + 4, dtype=np.uint8)
    rows = out[:payload].reshape(n_chunks, chunk_bytes)
    # Each chunk's values, viewed in place (rows are strided when a CRC follows each chunk).
    values = rows[:, :raw_bytes].view(data.dtype.newbyteorder("<"))
    target = values.view()
    target.shape = tiled.shape  # raises rather than silently copying if no view exists
    np.copyto(target, tiled)
    if chunk_crc:
        crcs = [google_crc32c.value(rows[i, :raw_bytes]) for i in range(n_chunks)]
        rows[:, raw_bytes:] = np.asarray(crcs, dtype="<u4").view(np.uint8).reshape(n_chunks, 4)
    index = out[payload : payload + 16 * n_chunks].view("<u8").reshape(n_chunks, 2)
    index[:, 0] = np.arange(n_chunks, dtype=np.uint64) * np.uint64(chunk_bytes)
    index[:, 1] = chunk_bytes
    crc = google_crc32c.value(out[payload : payload + 16 * n_chunks].tobytes())
    out[-4:] = np.frombuffer(np.uint32(crc).astype("<u4").tobytes(), dtype=np.uint8)
    return out


def write_region(arr: zarr.Array, start: int, data: np.ndarray) -> None:
    """Write ``data`` at ``arr[start : start + len(data)]`` along axis 0, whole shards fast."""
    shard = _plain_sharding(arr)
    shard_shape = arr.shards
    aligned = (
        shard is not None
        and shard_shape is not None
        and data.shape == tuple(shard_shape)
        and start % shard_shape[0] == 0
        and tuple(shard_shape[1:]) == tuple(arr.shape[1:])
        and data.dtype == arr.dtype
    )
    if not aligned:
        arr[start : start + len(data)] = data
        return
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    assert shard is not None and shard_shape is not None
    coords = (start // shard_shape[0],) + (0,) * (arr.ndim - 1)
    key = arr.metadata.encode_chunk_key(coords)
    chunk_crc = len(shard.codecs) == 2  # bytes + crc32c (schema 2); bare bytes before
    payload = encode_shard(
        np.ascontiguousarray(data), tuple(shard.chunk_shape), chunk_crc=chunk_crc
    )
    buffer = default_buffer_prototype().buffer.from_array_like(payload)
    store_path = arr.store_path
    full_key = f"{store_path.path}/{key}" if store_path.path else key
    sync(store_path.store.set(full_key, buffer))
