"""Create, describe and reopen a priorscope store: array shapes, chunking and shard ownership.

Chunking serves two access patterns with one layout. ``hidden`` is cut into shards of
``shard_examples`` examples holding every condition, layer and reduction: a writer fills one
shard file per array in one write. Inside a shard, each inner chunk holds one (condition, layer)
for all the shard's examples, so a probe reading one layer of every example touches one small
inner chunk per shard (zarr reads it with a ranged request through the shard index).

Every array chunked along ``example`` uses the same ``shard_examples`` boundaries, and full-
sequence rows of each example start at a multiple of ``token_block``: a shard of examples is
therefore owned by exactly one writer and no two writers ever touch the same file. That is what
makes ``--shard i/n`` safe on stores without locks.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from priorscope.engine.errors import ConfigMismatchError, StoreError, UsageError
from priorscope.engine.store import backend, schema
from priorscope.engine.store.dtypes import BF16_ATTR, zarr_dtype
from priorscope.engine.store.integrity import FINGERPRINT_ATTR, fingerprint

TARGET_SHARD_BYTES = 64 * 2**20  # big enough for fast sequential writes, small enough to buffer
MAX_SHARD_EXAMPLES = 1024


@dataclass(frozen=True)
class FullSeqLayout:
    """Which examples get full-sequence residuals and where their token rows start.

    ``examples`` are store indices; ``lengths[i]`` is the token count (padding excluded) of
    ``examples[i]``; rows of example i start at ``offsets[i]``, a multiple of ``token_block``.
    """

    examples: tuple[int, ...] = ()
    lengths: tuple[int, ...] = ()
    layers: tuple[int, ...] = ()
    conditions: tuple[str, ...] = ()
    rope_rows: int = 1
    token_block: int = 128

    @property
    def offsets(self) -> tuple[int, ...]:
        out = [0]
        for n in self.lengths:
            out.append(out[-1] + math.ceil(max(n, 1) / self.token_block) * self.token_block)
        return tuple(out)

    @property
    def enabled(self) -> bool:
        return bool(self.examples) and bool(self.layers) and bool(self.conditions)


@dataclass(frozen=True)
class StoreLayout:
    """Every shape and chunk decision of one store."""

    n_examples: int
    conditions: tuple[str, ...]
    layers: tuple[int, ...]
    reductions: tuple[str, ...]
    d_model: int
    candidates: tuple[str, ...]
    hidden_dtype: str
    shard_examples: int
    fullseq: FullSeqLayout = field(default_factory=FullSeqLayout)

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_examples / self.shard_examples)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Return the [start, stop) store indices of example shard ``shard``."""
        start = shard * self.shard_examples
        return start, min(start + self.shard_examples, self.n_examples)

    def hidden_shape(self) -> tuple[int, ...]:
        return (
            self.n_examples,
            len(self.conditions),
            len(self.layers),
            len(self.reductions),
            self.d_model,
        )

    def bytes_per_example(self) -> int:
        """Return the bytes of ``hidden`` one example takes on disk."""
        item = 4 if self.hidden_dtype == "float32" else 2
        return int(np.prod(self.hidden_shape()[1:])) * item


def array(group: zarr.Group, name: str) -> zarr.Array:
    """Return the array ``name`` of ``group``; raise StoreError when it is missing or a group."""
    return backend.node(group, name)


def choose_shard_examples(bytes_per_example: int, n_examples: int, world: int = 1) -> int:
    """Return a power-of-two example count whose hidden shard is close to 64 MiB.

    With ``world`` ranks and at least as many examples, shards hold at most n / world examples,
    so that every rank owns one (shards go round robin): 300 examples on 4 ranks give 64.
    """
    fit = max(1, TARGET_SHARD_BYTES // max(bytes_per_example, 1))
    size = 1 << (fit.bit_length() - 1)
    size = min(size, MAX_SHARD_EXAMPLES)
    if world > 1 and n_examples >= world:
        size = min(size, 1 << ((n_examples // world).bit_length() - 1))
    # A store smaller than one shard still gets one full-size shard; that costs nothing.
    return max(1, min(size, 1 << max(0, (n_examples - 1).bit_length())))


def rank_shards(n_shards: int, rank: int, world: int) -> list[int]:
    """Return the example shards rank ``rank`` of ``world`` owns (round robin, disjoint)."""
    return list(range(rank, n_shards, world))


def new_array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    dims: Sequence[str],
    *,
    shards: tuple[int, ...] | None = None,
    fill_value: Any = None,
    attrs: dict[str, Any] | None = None,
) -> zarr.Array:
    """Return a new uncompressed array whose every chunk carries a CRC-32C.

    Compression gains little on activations and costs a lot; the checksum (inner chunks of
    sharded arrays included) makes flipped or truncated bytes fail loudly on read.
    """
    from zarr.codecs import Crc32cCodec

    return group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=(Crc32cCodec(),),
        filters=None,
        fill_value=fill_value,
        dimension_names=tuple(dims),
        attributes=attrs or {},
    )


def _create_arrays(group: zarr.Group, layout: StoreLayout) -> None:
    """Create every capture-time array of ``layout`` (values stay at the fill value)."""
    n, s = layout.n_examples, layout.shard_examples
    n_cond, n_cand = len(layout.conditions), len(layout.candidates)
    for name, dtype, fill in (
        (schema.OUT_RAW, str, ""),
        (schema.OUT_ANSWER, str, ""),
        (schema.OUT_EXTRACTED, bool, False),
        (schema.OUT_SCORE, "float32", float("nan")),
    ):
        new_array(group, name, (n, n_cond), dtype, (s, n_cond), schema.DIMS[name], fill_value=fill)
    new_array(
        group,
        schema.OUT_CAND_LOGPROB,
        (n, n_cond, max(n_cand, 1)),
        "float32",
        (s, n_cond, max(n_cand, 1)),
        schema.DIMS[schema.OUT_CAND_LOGPROB],
        fill_value=float("nan"),
    )
    shape = layout.hidden_shape()
    new_array(
        group,
        schema.HIDDEN,
        shape,
        zarr_dtype(layout.hidden_dtype),
        (s, 1, 1, shape[3], shape[4]),
        schema.DIMS[schema.HIDDEN],
        shards=(s, *shape[1:]),
        fill_value=0,
        attrs={BF16_ATTR: layout.hidden_dtype == "bfloat16", "dtype": layout.hidden_dtype},
    )
    new_array(
        group,
        schema.COMMIT_DONE,
        (n,),
        bool,
        (s,),
        schema.DIMS[schema.COMMIT_DONE],
        fill_value=False,
    )
    if layout.fullseq.enabled:
        _create_fullseq(group, layout)


def _create_fullseq(group: zarr.Group, layout: StoreLayout) -> None:
    """Create the ragged full-sequence arrays and write their (known in advance) index."""
    fs = layout.fullseq
    rows, block, d = fs.offsets[-1], fs.token_block, layout.d_model
    n_fs = len(fs.examples)
    shape = (rows, len(fs.conditions), len(fs.layers), d)
    new_array(
        group,
        schema.FULLSEQ_VALUES,
        shape,
        zarr_dtype(layout.hidden_dtype),
        (block, 1, 1, d),
        schema.DIMS[schema.FULLSEQ_VALUES],
        shards=(block, *shape[1:]),
        fill_value=0,
        attrs={BF16_ATTR: layout.hidden_dtype == "bfloat16", "dtype": layout.hidden_dtype},
    )
    for name, dtype in (
        (schema.FULLSEQ_KIND, "int8"),
        (schema.FULLSEQ_INPUT_IDS, "int64"),
        (schema.FULLSEQ_ATTENTION_MASK, "int8"),
    ):
        new_array(group, name, (rows,), dtype, (block,), schema.DIMS[name], fill_value=0)
    new_array(
        group,
        schema.FULLSEQ_POSITION_IDS,
        (fs.rope_rows, rows),
        "int64",
        (fs.rope_rows, block),
        schema.DIMS[schema.FULLSEQ_POSITION_IDS],
        fill_value=0,
    )
    for name, values in (
        (schema.FULLSEQ_EXAMPLE, fs.examples),
        (schema.FULLSEQ_LENGTH, fs.lengths),
        (schema.FULLSEQ_OFFSETS, fs.offsets),
    ):
        arr = new_array(
            group, name, (len(values),), "int64", (max(len(values), 1),), schema.DIMS[name]
        )
        arr[:] = np.asarray(values, dtype=np.int64)
    group[schema.FULLSEQ].attrs.update(
        {
            "layers": list(fs.layers),
            "conditions": list(fs.conditions),
            "token_block": block,
            "n_examples": n_fs,
        }
    )


# Columns a writer may leave out, and what they hold then (source_row -1: data row unknown).
EXAMPLE_DEFAULTS = {
    "benchmark": "",
    "category": "",
    "question": "",
    "gold": "[]",
    "options": "[]",
    "metadata": "{}",
}


def _default_column(key: str, n: int) -> list[Any]:
    if key == "id":
        return [str(i) for i in range(n)]
    if key == "source_row":
        return [-1] * n
    return [EXAMPLE_DEFAULTS[key]] * n


def write_example_table(
    group: zarr.Group, columns: Mapping[str, Sequence[Any]], n: int, chunk: int
) -> None:
    """Write every declared ``examples/*`` column [n]; a column not given gets its default.

    The optional filter columns (``schema.EXAMPLE_FILTERS``) are written only when given.
    """
    known = [*schema.EXAMPLE_FIELDS, "source_row", *schema.EXAMPLE_FILTERS]
    unknown = sorted(set(columns) - set(known))
    if unknown:
        raise UsageError(
            f"Expected example columns among {known}. Got "
            f"{unknown} as well. Put other per-example values into 'metadata'."
        )
    for key in known:
        values = columns.get(key)
        if values is None and key in schema.EXAMPLE_FILTERS:
            continue
        if values is None:
            values = _default_column(key, n)
        if len(values) != n:
            raise UsageError(
                f"Expected {n} values in example column {key!r}. Got {len(values)} instead."
            )
        name = f"{schema.EX}/{key}"
        if key in ("n_images", "has_image"):
            dtype = "int64" if key == "n_images" else "bool"
            arr = new_array(group, name, (n,), dtype, (chunk,), ("example",))
            arr[:] = np.asarray(values, dtype=dtype)
        elif key == "source_row":
            arr = new_array(group, name, (n,), "int64", (chunk,), ("example",))
            arr[:] = np.asarray(values, dtype=np.int64)
        else:
            arr = new_array(group, name, (n,), str, (chunk,), ("example",), fill_value="")
            arr[:] = np.asarray([str(v) for v in values], dtype=object)


def _write_static(
    group: zarr.Group,
    layout: StoreLayout,
    examples: Mapping[str, Sequence[Any]],
    unembed: np.ndarray,
    final_norm: Mapping[str, Any],
) -> None:
    """Write the per-example table, the unembedding rows and the final norm parameters."""
    write_example_table(group, examples, layout.n_examples, layout.shard_examples)
    k = max(len(layout.candidates), 1)
    arr = new_array(
        group,
        schema.UNEMBED,
        (k, layout.d_model),
        "float32",
        (k, layout.d_model),
        schema.DIMS[schema.UNEMBED],
    )
    arr[:] = np.asarray(unembed, dtype=np.float32).reshape(k, layout.d_model)
    weight = np.asarray(final_norm["weight"], dtype=np.float32)
    attrs = {"kind": final_norm.get("kind", "rmsnorm"), "eps": float(final_norm.get("eps", 1e-6))}
    arr = new_array(
        group,
        schema.FINAL_NORM_WEIGHT,
        weight.shape,
        "float32",
        weight.shape,
        schema.DIMS[schema.FINAL_NORM_WEIGHT],
        attrs=attrs,
    )
    arr[:] = weight
    if final_norm.get("bias") is not None:
        bias = np.asarray(final_norm["bias"], dtype=np.float32)
        arr = new_array(
            group,
            schema.FINAL_NORM_BIAS,
            bias.shape,
            "float32",
            bias.shape,
            schema.DIMS[schema.FINAL_NORM_BIAS],
        )
        arr[:] = bias


def layout_to_json(layout: StoreLayout) -> dict[str, Any]:
    """Return the layout as JSON-able attributes (recorded as group attr ``layout``)."""
    fs = layout.fullseq
    return {
        "n_examples": layout.n_examples,
        "shard_examples": layout.shard_examples,
        "hidden_dtype": layout.hidden_dtype,
        "d_model": layout.d_model,
        "fullseq": {
            "examples": list(fs.examples),
            "lengths": list(fs.lengths),
            "layers": list(fs.layers),
            "conditions": list(fs.conditions),
            "rope_rows": fs.rope_rows,
            "token_block": fs.token_block,
        },
    }


def create_store(
    path: str | Path,
    layout: StoreLayout,
    attrs: Mapping[str, Any],
    examples: Mapping[str, Sequence[Any]],
    unembed: np.ndarray,
    final_norm: Mapping[str, Any],
) -> Path:
    """Return ``path`` after creating the complete empty store there, atomically.

    The store is built in a hidden sibling folder and renamed into place, so another process
    (a second rank, or a reader) sees either no store or a complete one.
    """
    full = dict(attrs)
    full.update(
        schema_version=schema.SCHEMA_VERSION,
        reductions=list(layout.reductions),
        layers=list(layout.layers),
        candidates=list(layout.candidates),
        hidden_dtype=layout.hidden_dtype,
        layout=layout_to_json(layout),
    )
    full = json.loads(json.dumps(full, default=str))
    full[FINGERPRINT_ATTR] = fingerprint(full)  # verify tells a later edit of these apart

    def build(group: zarr.Group) -> None:
        _create_arrays(group, layout)
        _write_static(group, layout, examples, unembed, final_norm)
        group.attrs.update(full)

    if backend.is_url(path):
        _create_remote(str(path), build)
        return path  # type: ignore[return-value]
    path = Path(path)
    tmp = path.parent / f".{path.name}.creating-{uuid.uuid4().hex[:8]}"
    try:
        build(backend.open_group(tmp, mode="w"))
        os.rename(tmp, path)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "zarr.json").exists():
            raise StoreError(f"Could not create the store at {path}: {exc}.") from exc
    return path


def _create_remote(url: str, build: Any) -> None:
    """Create the store at ``url`` so that its root ``zarr.json`` appears last.

    Object stores have no atomic rename. The empty store is built in memory (metadata and the
    small static arrays only), then uploaded object by object with the root group's metadata
    last: another rank waiting for ``zarr.json``, or a reader, sees no store or a whole one.
    An interrupted upload leaves no root ``zarr.json``, so the next run simply uploads again.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import FsspecStore, MemoryStore

    memory = MemoryStore()
    build(zarr.open_group(store=memory, mode="w"))
    target = FsspecStore.from_url(url, read_only=False)
    proto = default_buffer_prototype()

    async def upload() -> None:
        keys = sorted([k async for k in memory.list()], key=lambda k: k == "zarr.json")
        for key in keys:
            value = await memory.get(key, proto)
            assert value is not None
            await target.set(key, value)

    sync(upload())


def wait_for_store(path: str | Path, timeout_s: float) -> zarr.Group:
    """Return the store at ``path`` once it exists (another rank creates it), or raise."""
    deadline = time.monotonic() + timeout_s
    while not backend.exists(path):
        if time.monotonic() > deadline:
            raise StoreError(
                f"Expected rank 0 to create the store {path} within {timeout_s:.0f} s. Got no "
                "store. Start rank 0 too, or create the store first with --shard 0/N."
            )
        time.sleep(0.2)
    return open_for_capture(path)


def open_for_capture(path: str | Path) -> zarr.Group:
    """Return the existing store at ``path`` opened for writing (capture's resume and ranks)."""
    return backend.open_group(path, mode="r+")


def commit_mask(group: zarr.Group) -> np.ndarray:
    """Return ``commit/done`` [example] bool of a store a writer holds open."""
    return backend.read(array(group, schema.COMMIT_DONE)).astype(bool)


def config_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Return one line per configuration key whose recorded and wanted values differ."""
    lines = []
    for key in sorted(set(recorded) | set(wanted)):
        a, b = recorded.get(key, "<absent>"), wanted.get(key, "<absent>")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            lines.append(f"{key}: store has {_short(a)}, this run asks for {_short(b)}")
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def check_resume(group: zarr.Group, identity: Mapping[str, Any], path: str | Path) -> None:
    """Raise ConfigMismatchError if the store was written with another configuration."""
    recorded: Any = group.attrs.get("config")
    if recorded is None:
        raise StoreError(
            f"Expected {path} to be a priorscope store (group attribute 'config'). Got a Zarr "
            "group without it. Choose another --out or delete that folder."
        )
    diffs = config_differences(dict(recorded), json.loads(json.dumps(identity, default=str)))
    if diffs:
        raise ConfigMismatchError(
            f"Expected the configuration recorded in {path} to resume into it. Got a different "
            "one: " + "; ".join(diffs) + ". Use another --out for a new capture, or repeat the "
            "original options to finish this one."
        )


def layout_from_attrs(attrs: Mapping[str, Any]) -> StoreLayout:
    """Return the layout recorded in a store's group attributes (every rank uses this one)."""
    lay = attrs["layout"]
    fs = lay["fullseq"]
    return StoreLayout(
        n_examples=int(lay["n_examples"]),
        conditions=tuple(c["name"] for c in attrs["conditions"]),
        layers=tuple(int(v) for v in attrs["layers"]),
        reductions=tuple(attrs["reductions"]),
        d_model=int(lay["d_model"]),
        candidates=tuple(attrs["candidates"]),
        hidden_dtype=str(lay["hidden_dtype"]),
        shard_examples=int(lay["shard_examples"]),
        fullseq=FullSeqLayout(
            examples=tuple(int(v) for v in fs["examples"]),
            lengths=tuple(int(v) for v in fs["lengths"]),
            layers=tuple(int(v) for v in fs["layers"]),
            conditions=tuple(fs["conditions"]),
            rope_rows=int(fs["rope_rows"]),
            token_block=int(fs["token_block"]),
        ),
    )
