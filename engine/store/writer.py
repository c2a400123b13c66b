"""Assemble captured rows into whole example shards and write them behind the model's back.

The capture loop hands over one :class:`BatchRows` per batch; a background thread copies the rows
into the buffer of their example shard and writes a shard only once all its examples are in
(every array, then ``commit/done``). Writing whole shards means a write never reads a file back,
two ranks never touch the same file, and a crash at any moment leaves every shard either fully
committed or uncommitted: resume simply recomputes uncommitted shards.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from priorscope.engine.errors import StoreError
from priorscope.engine.store import schema
from priorscope.engine.store.dtypes import zarr_dtype
from priorscope.engine.store.layout import StoreLayout, array
from priorscope.engine.store.shardio import write_region


@dataclass
class FullSeqRows:
    """Full-sequence rows of one example: values [token, fs_condition, fs_layer, d_model]."""

    values: np.ndarray
    kind: np.ndarray  # [token] int8
    input_ids: np.ndarray  # [token] int64
    position_ids: np.ndarray  # [rope, token] int64
    grad: np.ndarray | None = None  # [token, fs_condition, fs_layer, d_model] float32 (--grad)


@dataclass
class BatchRows:
    """What one batch of examples produced, for every condition.

    ``hidden`` is [batch, condition, layer, reduction, d_model] in the storage dtype; it may
    instead be produced by ``hidden_fn`` (called on the writer thread, e.g. to wait for an
    asynchronous device-to-host copy) so the model loop never blocks on the copy.
    """

    indices: np.ndarray  # [batch] store indices
    raw: np.ndarray  # [batch, condition] object (str)
    answer: np.ndarray  # [batch, condition] object (str)
    extracted: np.ndarray  # [batch, condition] bool
    score: np.ndarray  # [batch, condition] float32
    cand_logprob: np.ndarray  # [batch, condition, candidate] float32
    hidden: np.ndarray | None = None
    hidden_fn: Callable[[], np.ndarray] | None = None
    fullseq: dict[int, FullSeqRows] = field(default_factory=dict)
    grad_last: np.ndarray | None = None  # [batch, condition, layer, d_model] float32 (--grad)
    grad_targets: np.ndarray | None = None  # [batch, 2] int64 gold and prior candidate index


class _ShardBuffer:
    """Host buffers for one example shard; filled row by row, written once."""

    def __init__(self, layout: StoreLayout, shard: int, hidden: np.ndarray | None = None) -> None:
        self.start, self.stop = layout.shard_range(shard)
        n, c, k = self.stop - self.start, len(layout.conditions), max(len(layout.candidates), 1)
        shape = (n, *layout.hidden_shape()[1:])
        # Every row is overwritten before the shard is written, so a recycled buffer is fine.
        if hidden is None or hidden.shape != shape:
            hidden = np.empty(shape, dtype=zarr_dtype(layout.hidden_dtype))
        self.hidden = hidden
        self.raw = np.full((n, c), "", dtype=object)
        self.answer = np.full((n, c), "", dtype=object)
        self.extracted = np.zeros((n, c), dtype=bool)
        self.score = np.full((n, c), np.nan, dtype=np.float32)
        self.cand = np.full((n, c, k), np.nan, dtype=np.float32)
        self.filled = np.zeros(n, dtype=bool)
        self.fullseq_written: set[int] = set()
        self.grad_last: np.ndarray | None = None  # allocated by the first batch that has one
        self.grad_targets = np.full((n, 2), -1, dtype=np.int64)

    def add(self, rows: BatchRows, hidden: np.ndarray, sel: np.ndarray) -> None:
        """Copy the rows selected by ``sel`` (a mask over the batch) into this shard."""
        local = rows.indices[sel] - self.start
        self.hidden[local] = hidden[sel]
        self.raw[local] = rows.raw[sel]
        self.answer[local] = rows.answer[sel]
        self.extracted[local] = rows.extracted[sel]
        self.score[local] = rows.score[sel]
        self.cand[local] = rows.cand_logprob[sel]
        if rows.grad_last is not None:
            if self.grad_last is None:
                shape = (self.stop - self.start, *rows.grad_last.shape[1:])
                self.grad_last = np.zeros(shape, dtype=np.float32)
            self.grad_last[local] = rows.grad_last[sel]
        if rows.grad_targets is not None:
            self.grad_targets[local] = rows.grad_targets[sel]
        self.filled[local] = True


FAULT_ENV = "PRIORSCOPE_FAULT_INJECT"


def _fault_point(point: str, ordinal: int) -> None:
    """SIGKILL this process at ``point`` of its ``ordinal``-th shard write if asked to.

    Crash tests set ``PRIORSCOPE_FAULT_INJECT=point:ordinal`` (points: ``hidden`` after the
    hidden shard, ``arrays`` after every array but before the commit, ``commit`` after it) to
    die exactly where a real crash would hurt most; unset, this does nothing.
    """
    if os.environ.get(FAULT_ENV) == f"{point}:{ordinal}":
        os.kill(os.getpid(), signal.SIGKILL)


def write_shard(group: zarr.Group, layout: StoreLayout, buf: _ShardBuffer, ordinal: int = 0) -> int:
    """Write one complete shard, commit it last, and return the bytes of values written."""
    sl = slice(buf.start, buf.stop)
    write_region(array(group, schema.HIDDEN), buf.start, buf.hidden)
    _fault_point("hidden", ordinal)
    array(group, schema.OUT_RAW)[sl] = buf.raw
    array(group, schema.OUT_ANSWER)[sl] = buf.answer
    array(group, schema.OUT_EXTRACTED)[sl] = buf.extracted
    array(group, schema.OUT_SCORE)[sl] = buf.score
    array(group, schema.OUT_CAND_LOGPROB)[sl] = buf.cand
    nbytes = buf.hidden.nbytes + buf.score.nbytes + buf.cand.nbytes
    if schema.GRAD_LAST in group:
        if buf.grad_last is None:
            raise StoreError(
                f"Expected margin gradients for examples {buf.start}..{buf.stop - 1} (the store "
                "was created with --grad). Got none."
            )
        write_region(array(group, schema.GRAD_LAST), buf.start, buf.grad_last)
        array(group, schema.GRAD_GOLD)[sl] = buf.grad_targets[:, 0]
        array(group, schema.GRAD_PRIOR)[sl] = buf.grad_targets[:, 1]
        nbytes += buf.grad_last.nbytes
    missing = [i for i in layout.fullseq.examples if buf.start <= i < buf.stop]
    missing = [i for i in missing if i not in buf.fullseq_written]
    if missing:
        raise StoreError(f"Expected full-sequence rows for examples {missing}. Got none.")
    _fault_point("arrays", ordinal)
    # The commit goes last: an example counts as done only once all of its arrays are on disk.
    array(group, schema.COMMIT_DONE)[sl] = np.ones(buf.stop - buf.start, dtype=bool)
    _fault_point("commit", ordinal)
    return nbytes


def write_fullseq_example(
    group: zarr.Group, layout: StoreLayout, idx: int, rows: FullSeqRows
) -> int:
    """Write one example's full-sequence rows into its own token blocks; return bytes written.

    Called as soon as the rows arrive, before the shard's commit: the example owns its blocks,
    so an early write is safe, and a crash before the commit just rewrites them on resume.
    Holding them until the shard completes could take gigabytes at 3B scale.
    """
    fs = layout.fullseq
    i = fs.examples.index(idx)
    start, stop, n = fs.offsets[i], fs.offsets[i + 1], fs.lengths[i]
    if rows.values.shape[0] != n:
        raise StoreError(
            f"Expected {n} full-sequence tokens for example {idx} (measured before capture). "
            f"Got {rows.values.shape[0]} instead."
        )
    # Write the whole block-aligned region (zeros past the end): no partial chunks, no reads.
    span = stop - start
    values = np.zeros((span, *rows.values.shape[1:]), dtype=rows.values.dtype)
    values[:n] = rows.values
    for offset in range(0, span, fs.token_block):  # one whole shard file per token block
        block = values[offset : offset + fs.token_block]
        write_region(array(group, schema.FULLSEQ_VALUES), start + offset, block)
    for name, src in (
        (schema.FULLSEQ_KIND, rows.kind),
        (schema.FULLSEQ_INPUT_IDS, rows.input_ids),
        (schema.FULLSEQ_ATTENTION_MASK, np.ones(n, dtype=np.int8)),
    ):
        padded = np.zeros(span, dtype=src.dtype)
        padded[:n] = src
        array(group, name)[start:stop] = padded
    pos = np.zeros((rows.position_ids.shape[0], span), dtype=np.int64)
    pos[:, :n] = rows.position_ids
    array(group, schema.FULLSEQ_POSITION_IDS)[:, start:stop] = pos
    if schema.GRAD_FULLSEQ in group:
        if rows.grad is None or rows.grad.shape[0] != n:
            raise StoreError(
                f"Expected {n} full-sequence gradient rows for example {idx} (--grad). Got "
                f"{None if rows.grad is None else rows.grad.shape[0]} instead."
            )
        grad = np.zeros((span, *rows.grad.shape[1:]), dtype=np.float32)
        grad[:n] = rows.grad
        for offset in range(0, span, fs.token_block):
            block = grad[offset : offset + fs.token_block]
            write_region(array(group, schema.GRAD_FULLSEQ), start + offset, block)
    return values.nbytes


def create_grad_arrays(group: zarr.Group, layout: StoreLayout) -> None:
    """Create the ``grad/*`` arrays of a ``--grad`` capture, chunked like the values they explain.

    Called once the store exists, by every rank: whichever comes first creates an array, and an
    interrupted creation is completed by the next run (each array is created only if absent).
    """
    from priorscope.engine.store.layout import new_array

    n, s, d = layout.n_examples, layout.shard_examples, layout.d_model
    shape = (n, len(layout.conditions), len(layout.layers), d)
    specs: list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...] | None, Any]] = [
        (schema.GRAD_GOLD, (n,), (s,), None, -1),
        (schema.GRAD_PRIOR, (n,), (s,), None, -1),
        (schema.GRAD_LAST, shape, (s, 1, 1, d), (s, *shape[1:]), 0.0),
    ]
    if layout.fullseq.enabled:
        fs = layout.fullseq
        fshape = (fs.offsets[-1], len(fs.conditions), len(fs.layers), d)
        block = (fs.token_block, 1, 1, d)
        specs.append((schema.GRAD_FULLSEQ, fshape, block, (fs.token_block, *fshape[1:]), 0.0))
    for name, arr_shape, chunks, shards, fill in specs:
        if name in group:
            continue
        dtype = "int64" if fill == -1 else "float32"
        with contextlib.suppress(zarr.errors.ContainsArrayError):  # another rank was first
            new_array(
                group,
                name,
                arr_shape,
                dtype,
                chunks,
                schema.DIMS[name],
                shards=shards,
                fill_value=fill,
            )


class ShardWriter:
    """A background thread that assembles :class:`BatchRows` into shards and writes them.

    ``put`` blocks once ``max_pending`` batches wait, which bounds host memory whatever the
    dataset size; errors on the thread resurface on the next ``put`` or on ``close``.
    """

    def __init__(
        self, group: zarr.Group, layout: StoreLayout, shards: list[int], max_pending: int = 4
    ) -> None:
        self.group, self.layout = group, layout
        self.expected = {s: layout.shard_range(s) for s in shards}
        self.buffers: dict[int, _ShardBuffer] = {}
        self._free: list[np.ndarray] = []
        self.bytes_written = 0
        self.write_seconds = 0.0
        self.shards_done = 0
        self._queue: queue.Queue[BatchRows | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="priorscope-writer", daemon=True)
        self._thread.start()

    def put(self, rows: BatchRows) -> None:
        """Queue one batch for writing (blocks while the queue is full)."""
        self._raise_if_failed()
        self._queue.put(rows)

    def close(self) -> None:
        """Wait for every queued batch to be written; re-raise a writer error."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()
        if self.buffers:
            missing = sorted(self.buffers)
            raise StoreError(
                f"Expected every owned shard to be complete. Shards {missing} are not."
            )

    def abort(self) -> None:
        """Stop after the batches already queued, without raising; incomplete shards are dropped."""
        self._queue.put(None)
        self._thread.join()
        self.buffers.clear()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise StoreError(f"The store writer failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            rows = self._queue.get()
            if rows is None:
                return
            if self._error is not None:
                continue  # drain so the producer never blocks forever
            try:
                self._consume(rows)
            except BaseException as exc:  # handed to the producer thread
                self._error = exc

    def _consume(self, rows: BatchRows) -> None:
        hidden = rows.hidden if rows.hidden is not None else rows.hidden_fn()  # type: ignore[misc]
        shard_of = rows.indices // self.layout.shard_examples
        for shard in np.unique(shard_of):
            shard = int(shard)
            if shard not in self.expected:
                raise StoreError(f"Expected rows of owned shards only. Got shard {shard}.")
            buf = self.buffers.get(shard)
            if buf is None:
                recycled = self._free.pop() if self._free else None
                buf = self.buffers[shard] = _ShardBuffer(self.layout, shard, recycled)
            sel = shard_of == shard
            buf.add(rows, hidden, sel)
            for idx in rows.indices[sel]:
                if int(idx) in rows.fullseq:
                    t0 = time.perf_counter()
                    self.bytes_written += write_fullseq_example(
                        self.group, self.layout, int(idx), rows.fullseq[int(idx)]
                    )
                    self.write_seconds += time.perf_counter() - t0
                    buf.fullseq_written.add(int(idx))
            if buf.filled.all():
                t0 = time.perf_counter()
                self.bytes_written += write_shard(self.group, self.layout, buf, self.shards_done)
                self.write_seconds += time.perf_counter() - t0
                self.shards_done += 1
                del self.buffers[shard]
                # Reusing a written shard's pages avoids page-faulting 64 MiB of fresh memory
                # per shard, which cost as much as the write itself.
                if len(self._free) < 2:
                    self._free.append(buf.hidden)
