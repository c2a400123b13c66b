"""The one handle on a store: every analysis, the report, the demo and ``store`` commands use it.

It owns the commit policy: only committed examples are visible unless a caller passes
``include_uncommitted=True``, in eager reads, lazy (dask) reads and chunk iteration alike.
Examples that capture skipped (``--on-bad skip``: their image could not be decoded) are
committed but hold no values, so the policy leaves them out too (``skipped()`` names them). A
capture may still be writing, and an uncommitted shard can hold anything from zeros to a
half-written file, so the commit mask is read before any value and only rows committed then are
returned.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import zarr

from priorscope.engine.conditions import Condition
from priorscope.engine.errors import StoreError, UsageError, did_you_mean
from priorscope.engine.store import backend, chunks, schema, skips
from priorscope.engine.store.checks import parse_conditions, structure_problems
from priorscope.engine.store.dtypes import BF16_ATTR, decode
from priorscope.engine.store.tables import ExampleTable, read_example_table

OUTPUTS = ("raw", "answer", "extracted", "score", "cand_logprob")


def site_name(layer: int) -> str:
    """Return the site name of a store layer: -1 is 'embed', i is 'resid.{i}'."""
    return "embed" if layer == -1 else f"resid.{layer}"


def index_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Return the [start, stop) runs of consecutive indices in ascending ``rows``."""
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) > 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    stops = np.concatenate([rows[breaks], [rows[-1]]]) + 1
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


@dataclass(frozen=True)
class FullSeq:
    """Full-sequence rows of one example: values [token, fs_condition, fs_layer, d_model] float32.

    ``kind`` [token] int8 token kinds, ``input_ids`` [token] int64, ``position_ids`` [rope, token]
    int64 and ``attention_mask`` [token] are what a replay of the decoder suffix needs.
    """

    values: np.ndarray
    kind: np.ndarray
    input_ids: np.ndarray
    position_ids: np.ndarray
    attention_mask: np.ndarray
    layers: tuple[int, ...]
    conditions: tuple[str, ...]


@dataclass(frozen=True)
class FinalNorm:
    """The model's final norm: ``kind`` 'rmsnorm' or 'layernorm', weight [d], bias [d] | None."""

    kind: str
    weight: np.ndarray
    bias: np.ndarray | None
    eps: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Return the norm of ``x`` [..., d] as float32, computed in float32 like the models do."""
        h = np.asarray(x, dtype=np.float32)
        if self.kind == "layernorm":
            h = h - h.mean(axis=-1, keepdims=True)
        var = np.mean(np.square(h), axis=-1, keepdims=True)
        out = h / np.sqrt(var + np.float32(self.eps)) * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out.astype(np.float32, copy=False)


class Store:
    """A read-only view of the store at ``path`` (a local folder or a URL zarr can open).

    Opening runs the cheap integrity checks (schema version, the declared arrays, shapes against
    the attributes); :func:`open_store` with ``deep=True`` runs verify's deep checks first.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._group = backend.open_group(path, mode="r")
        self.attrs: dict[str, Any] = dict(self._group.attrs)
        problems = structure_problems(self._group, self.attrs)
        if problems:
            raise StoreError(
                f"Expected a complete, consistent priorscope store at {self.path!r}. Got: "
                + "; ".join(problems)
                + ". Run 'priorscope store verify' on it; re-capture if the store was written "
                "by another priorscope version or was damaged."
            )
        self.conditions: list[Condition] = parse_conditions(self.attrs)[0]
        self._table: ExampleTable | None = None
        self._mask: np.ndarray | None = None

    # ---- description ------------------------------------------------------------------------

    @property
    def group(self) -> zarr.Group:
        """The raw read-only Zarr group (for the store package and tests that inspect bytes)."""
        return self._group

    @property
    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    @property
    def layers(self) -> list[int]:
        return [int(v) for v in self.attrs.get("layers", [])]

    @property
    def sites(self) -> list[str]:
        return [site_name(layer) for layer in self.layers]

    @property
    def reductions(self) -> list[str]:
        return list(self.attrs.get("reductions", []))

    @property
    def candidates(self) -> list[str]:
        return list(self.attrs.get("candidates", []))

    @property
    def model_ref(self) -> dict[str, Any]:
        return dict(self.attrs.get("model", {}))

    @property
    def answers_only(self) -> bool:
        return bool(self.attrs.get("answers_only", False))

    @property
    def shard_examples(self) -> int:
        """Return the example count of one shard (every example-chunked array shares it)."""
        return int(self._array(schema.COMMIT_DONE).chunks[0])

    @property
    def n_examples(self) -> int:
        return int(self._array(schema.COMMIT_DONE).shape[0])

    def __repr__(self) -> str:
        return (
            f"Store({self.path!r}, examples={self.n_examples}, conditions={self.condition_names})"
        )

    def _array(self, name: str) -> zarr.Array:
        return backend.node(self._group, name)

    def has(self, name: str) -> bool:
        """Return whether the store holds the array or group at path ``name``."""
        return name in self._group

    # ---- the commit policy ------------------------------------------------------------------

    def committed(self) -> np.ndarray:
        """Return the visible mask [example] bool: every array written, example not skipped."""
        if self._mask is not None:
            return self._mask.copy()
        return skips.visible(self.finished(), self._group)

    def finished(self) -> np.ndarray:
        """Return the commit log [example] bool: True where capture is done with the example
        (captured or skipped); what completeness and resume go by."""
        return backend.read(self._array(schema.COMMIT_DONE)).astype(bool)

    def skipped(self) -> np.ndarray:
        """Return [example] bool: True where capture skipped the example (no values stored)."""
        return skips.skipped_mask(self._group)

    def skip_reasons(self) -> np.ndarray:
        """Return [example] object: why each example was skipped ("" for captured ones)."""
        return skips.skip_reasons(self._group)

    def snapshot(self) -> Store:
        """Return a handle whose commit mask is frozen now, so that reads agree on the rows.

        An analysis that reads the table and several outputs of a store still being written
        takes one snapshot first; rows committed later stay invisible to it.
        """
        frozen = copy.copy(self)
        frozen._mask = self.committed()
        return frozen

    def select(self, rows: Any) -> Store:
        """Return a frozen handle (as :meth:`snapshot`) that shows only ``rows`` (store indices)
        of the examples visible now: every analysis given it (decay, report, probes, patching,
        lens) reads those examples alone. Rows that are not visible stay invisible."""
        picked = np.asarray(rows, dtype=np.int64).reshape(-1)
        bad = picked[(picked < 0) | (picked >= self.n_examples)]
        if bad.size:
            raise UsageError(
                f"Expected store rows between 0 and {self.n_examples - 1} of {self.path!r}. Got "
                f"{bad[:5].tolist()} instead."
            )
        frozen = self.snapshot()
        keep = np.zeros(self.n_examples, dtype=bool)
        keep[picked] = True
        frozen._mask = frozen.committed() & keep
        return frozen

    def where(self, column: str, value: Any) -> Store:
        """Return :meth:`select` of the visible examples whose ``column`` (a table field or a
        metadata key, as ``examples().column``) equals ``value``, e.g. ``where("template",
        "color")``."""
        table = self.examples()
        values = table.column(column)
        return self.select(table.rows[[v == value for v in values]])

    def is_complete(self) -> bool:
        return bool(self.committed().all())

    def rows(self, include_uncommitted: bool = False) -> np.ndarray:
        """Return the store indices an analysis sees [n] int64, ascending."""
        if include_uncommitted:
            return np.arange(self.n_examples, dtype=np.int64)
        return np.flatnonzero(self.committed()).astype(np.int64)

    def _read_rows(self, arr: zarr.Array, rows: np.ndarray, key: tuple[Any, ...] = ()) -> Any:
        """Return ``arr[rows, *key]`` reading only the runs of ``rows`` (never other shards)."""
        runs = index_runs(rows)
        if len(runs) == 1 and runs[0] == (0, arr.shape[0]):
            return backend.read(arr, (slice(None), *key))
        parts = [backend.read(arr, (slice(a, b), *key)) for a, b in runs]
        return np.concatenate(parts, axis=0) if parts else backend.read(arr, (slice(0, 0), *key))

    # ---- examples and outputs ---------------------------------------------------------------

    @overload
    def examples(
        self, include_uncommitted: bool = False, *, committed_only: bool | None = None
    ) -> ExampleTable: ...

    @overload
    def examples(
        self, include_uncommitted: str, *, committed_only: bool | None = None
    ) -> np.ndarray: ...

    def examples(
        self, include_uncommitted: bool | str = False, *, committed_only: bool | None = None
    ) -> ExampleTable | np.ndarray:
        """Return the ExampleTable of the visible examples (committed unless asked otherwise).

        Older callers keep working: a column name as the argument returns that column (now
        ``examples().column(name)``) and ``committed_only`` is ``not include_uncommitted``.
        """
        column = include_uncommitted if isinstance(include_uncommitted, str) else None
        everything = False if column is not None else bool(include_uncommitted)
        if committed_only is not None:
            everything = not committed_only
        rows = self.rows(everything)
        if self._table is None:
            self._table = read_example_table(self._group, tuple(self.conditions), self.path)
        n_skipped = 0 if everything else int(self.skipped().sum())
        table = dataclasses.replace(
            self._table.take(rows),
            n_uncommitted=self.n_examples - len(rows) - n_skipped,
            n_skipped=n_skipped,
        )
        return table if column is None else table.column(column)

    def _output_path(self, name: str) -> str:
        if name not in OUTPUTS:
            raise did_you_mean(name, list(OUTPUTS), "output")
        return f"outputs/{name}"

    def outputs(
        self, name: str, include_uncommitted: bool = False, *, committed_only: bool | None = None
    ) -> np.ndarray:
        """Return outputs/``name`` [example, condition(, candidate)] of the visible examples."""
        if committed_only is not None:
            include_uncommitted = not committed_only
        arr = self._array(self._output_path(name))
        return np.asarray(self._read_rows(arr, self.rows(include_uncommitted)))

    def outputs_dask(
        self, name: str, include_uncommitted: bool = False, *, chunk_rows: int | None = None
    ) -> Any:
        """Return outputs/``name`` of the visible examples as a lazy dask array.

        ``chunk_rows`` re-chunks along the example axis (None keeps the store's chunks), so a
        store of any size is read one block of examples at a time.
        """
        import dask.array as da

        rows = self.rows(include_uncommitted)
        lazy = da.from_zarr(self._array(self._output_path(name)))
        if chunk_rows is not None:
            lazy = lazy.rechunk({0: chunk_rows})
        return _select_rows(lazy, rows)

    # ---- hidden states ----------------------------------------------------------------------

    def _index(self, kind: str, value: Any, known: list[Any]) -> int:
        if value in known:
            return known.index(value)
        if kind == "layer":
            sites = [site_name(v) for v in known]
            if value in sites:
                return sites.index(value)
            raise did_you_mean(str(value), [*map(str, known), *sites], kind)
        raise did_you_mean(str(value), [str(k) for k in known], kind)

    def layer_index(self, layer: int | str) -> int:
        """Return the layer axis index of a store layer (int, -1 = embed) or site name."""
        return self._index("layer", layer, self.layers)

    def condition_index(self, condition: str) -> int:
        """Return the condition axis index of ``condition``; unknown names raise."""
        return self._index("condition", condition, self.condition_names)

    def _hidden_array(self) -> tuple[zarr.Array, bool]:
        if self.answers_only:
            raise StoreError(
                f"Expected hidden states in {self.path!r}. Got an answers-only store. Capture "
                "with 'priorscope capture' to record them."
            )
        arr = self._array(schema.HIDDEN)
        return arr, bool(arr.attrs.get(BF16_ATTR, False))

    def hidden(
        self,
        layer: int | str | None = None,
        condition: str | None = None,
        reduction: str | None = None,
        include_uncommitted: bool = False,
        *,
        committed_only: bool | None = None,
    ) -> np.ndarray:
        """Return hidden states as float32 [example, condition, layer, reduction, d_model].

        Axes given as arguments are dropped; ``layer`` is a store layer (-1 = embed) or a site
        name ('embed', 'resid.3'). Only committed examples unless ``include_uncommitted``.
        """
        if committed_only is not None:
            include_uncommitted = not committed_only
        arr, is_bf16 = self._hidden_array()
        key = (
            slice(None) if condition is None else self.condition_index(condition),
            slice(None) if layer is None else self.layer_index(layer),
            slice(None)
            if reduction is None
            else self._index("reduction", reduction, self.reductions),
        )
        # The mask is read before the values: a shard committed in between is then merely
        # left out, never returned half-written.
        rows = self.rows(include_uncommitted)
        return decode(self._read_rows(arr, rows, key), is_bf16)

    def hidden_dask(self, include_uncommitted: bool = False) -> Any:
        """Return hidden states of the visible examples as a lazy float32 dask array.

        Shape [example, condition, layer, reduction, d_model], chunked like the store's inner
        chunks (one (condition, layer) of one shard per block).
        """
        import dask.array as da

        arr, is_bf16 = self._hidden_array()
        rows = self.rows(include_uncommitted)
        lazy = da.from_zarr(arr, chunks=arr.chunks)
        decoded = lazy.map_blocks(decode, is_bf16, dtype=np.float32)
        return _select_rows(decoded, rows)

    def iter_hidden_chunks(
        self, layer: int | str, condition: str, include_uncommitted: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (rows [m] int64, values [m, reduction, d_model] float32), one shard at a time.

        Each step reads only the (condition, layer) inner chunk of one shard and keeps its
        committed rows, so memory stays bounded by one shard whatever the store's size.
        """
        tasks = self.hidden_chunk_tasks(layer, condition)
        done = self.committed()  # once, before any value
        for task in tasks:
            mask = None if include_uncommitted else done[task.start : task.stop]
            if mask is not None and not mask.any():
                continue
            yield chunks.read_hidden_chunk(
                task, include_uncommitted=include_uncommitted, group=self._group, done=mask
            )

    def hidden_chunk_tasks(self, layer: int | str, condition: str) -> list[chunks.HiddenChunk]:
        """Return one picklable (path, layer, condition, start, stop) per shard.

        :func:`read_hidden_chunk` reads one in any process (a dask worker opens the store
        there), keeping the rows committed at that moment.
        """
        self._hidden_array()
        lay = self.layers[self.layer_index(layer)]
        self.condition_index(condition)
        step, n = self.shard_examples, self.n_examples
        return [
            chunks.HiddenChunk(self.path, lay, condition, start, min(start + step, n))
            for start in range(0, n, step)
        ]

    # ---- full sequences, unembedding, final norm --------------------------------------------

    def fullseq_examples(self) -> list[int]:
        """Return the store indices that have full-sequence residuals."""
        if schema.FULLSEQ_EXAMPLE not in self._group:
            return []
        return [int(i) for i in backend.read(self._array(schema.FULLSEQ_EXAMPLE))]

    def fullseq(self, example: int) -> FullSeq:
        """Return the full-sequence rows of store index ``example`` (a committed one)."""
        known = self.fullseq_examples()
        if example not in known:
            raise StoreError(
                f"Expected an example with full-sequence residuals ({known[:10]}...). Got {example}. "
                "Capture with --full-seq N to record them."
            )
        if not self.committed()[example]:
            why = str(self.skip_reasons()[example])
            got = f"was skipped by capture ({why})" if why else "is not committed yet"
            raise StoreError(f"Expected a committed example. Example {example} {got}.")
        i = known.index(example)
        start = int(backend.read(self._array(schema.FULLSEQ_OFFSETS), i))
        stop = start + int(backend.read(self._array(schema.FULLSEQ_LENGTH), i))
        arr = self._array(schema.FULLSEQ_VALUES)
        attrs: dict[str, Any] = dict(self._group[schema.FULLSEQ].attrs)

        def part(name: str) -> np.ndarray:
            return backend.read(self._array(name), slice(start, stop))

        return FullSeq(
            values=decode(backend.read(arr, slice(start, stop)), bool(arr.attrs.get(BF16_ATTR))),
            kind=part(schema.FULLSEQ_KIND),
            input_ids=part(schema.FULLSEQ_INPUT_IDS),
            position_ids=backend.read(
                self._array(schema.FULLSEQ_POSITION_IDS), (slice(None), slice(start, stop))
            ),
            attention_mask=part(schema.FULLSEQ_ATTENTION_MASK),
            layers=tuple(int(v) for v in attrs["layers"]),
            conditions=tuple(attrs["conditions"]),
        )

    def unembed(self) -> np.ndarray:
        """Return the candidates' LM-head rows [candidate, d_model] float32."""
        self._hidden_array()
        return backend.read(self._array(schema.UNEMBED)).astype(np.float32)

    def final_norm(self) -> FinalNorm:
        """Return the model's final norm parameters (a logit lens needs no model)."""
        self._hidden_array()
        weight = self._array(schema.FINAL_NORM_WEIGHT)
        bias = (
            backend.read(self._array(schema.FINAL_NORM_BIAS)).astype(np.float32)
            if schema.FINAL_NORM_BIAS in self._group
            else None
        )
        return FinalNorm(
            kind=str(weight.attrs.get("kind", "rmsnorm")),
            weight=backend.read(weight).astype(np.float32),
            bias=bias,
            eps=float(weight.attrs.get("eps", 1e-6)),  # type: ignore[arg-type]
        )

    # ---- margin gradients (capture --grad) ---------------------------------------------------

    def _grad_array(self, name: str) -> zarr.Array:
        if schema.GRAD_LAST not in self._group:
            raise StoreError(
                f"Expected margin gradients in {self.path!r}. Got none. Capture with --grad to "
                "record them (patch --estimate reads them)."
            )
        return self._array(name)

    def grad_last(self, layer: int | str, include_uncommitted: bool = False) -> np.ndarray:
        """Return answer-position margin gradients [example, condition, d_model] float32.

        Rows are the visible examples (committed unless asked otherwise), as :meth:`hidden`.
        """
        arr = self._grad_array(schema.GRAD_LAST)
        rows = self.rows(include_uncommitted)
        key = (slice(None), self.layer_index(layer))
        return np.asarray(self._read_rows(arr, rows, key), dtype=np.float32)

    def fullseq_grad(self, example: int) -> np.ndarray:
        """Return [token, fs_condition, fs_layer, d_model] aligned with ``fullseq(example)``."""
        arr = self._grad_array(schema.GRAD_FULLSEQ) if self.fullseq_examples() else None
        known = self.fullseq_examples()
        if arr is None or example not in known or not self.committed()[example]:
            raise StoreError(
                f"Expected a committed full-sequence example ({known[:10]}). Got {example}. "
                "Capture with --grad and --full-seq N covering it."
            )
        i = known.index(example)
        start = int(backend.read(self._array(schema.FULLSEQ_OFFSETS), i))
        stop = start + int(backend.read(self._array(schema.FULLSEQ_LENGTH), i))
        return np.asarray(backend.read(arr, slice(start, stop)), dtype=np.float32)

    def to_xarray(self, include_uncommitted: bool = False) -> Any:
        """Return outputs (eager) and hidden states (lazy) as an xarray Dataset with coords."""
        from priorscope.engine.store.xr import store_to_xarray

        return store_to_xarray(self, include_uncommitted)


def _select_rows(lazy: Any, rows: np.ndarray) -> Any:
    """Return ``lazy`` restricted to ``rows`` along axis 0 (no copy when every row is kept)."""
    if len(rows) == lazy.shape[0]:
        return lazy
    return lazy[rows]


def open_store(path: str | Path | Store, *, deep: bool = False) -> Store:
    """Return the store at ``path`` (a Store passes through); ``deep`` runs verify's checks first.

    Raises StoreError when the store fails them; uncommitted examples are not a failure (a
    capture may still be writing): the handle simply does not show them.
    """
    store = path if isinstance(path, Store) else Store(path)
    if deep:
        from priorscope.engine.store.verify import integrity_problems

        problems = integrity_problems(store, deep=True)
        if problems:
            raise StoreError(
                f"Expected a store whose committed data is intact at {store.path!r}. Got: "
                + "; ".join(problems)
                + ". Re-run the capture command to rewrite damaged shards."
            )
    return store
