"""Run a capture: the model loop on the calling thread, the store writes on a background thread."""

from __future__ import annotations

import dataclasses
import errno
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from priorscope.engine.capture.config import CaptureConfig, validate
from priorscope.engine.capture.hooks import Recorder, recording
from priorscope.engine.capture.images import condition_images, condition_tensors
from priorscope.engine.capture.plan import Plan, batches_of_shard
from priorscope.engine.capture.progress import CaptureProgress, RankLog, describe_runs
from priorscope.engine.capture.setup import open_capture_store, prepare
from priorscope.engine.conditions import Condition
from priorscope.engine.data import scoring
from priorscope.engine.errors import (
    CaptureInterrupted,
    DataError,
    KernelError,
    ModelError,
    PriorscopeError,
    StoreError,
    UsageError,
)
from priorscope.engine.models.base import VLMAdapter
from priorscope.engine.store import commit_mask
from priorscope.engine.store.backend import exists as store_exists
from priorscope.engine.store.dtypes import to_storage, torch_dtype
from priorscope.engine.store.layout import StoreLayout, rank_shards
from priorscope.engine.store.skips import create_skip_array, has_skip_marks, write_skip_marks
from priorscope.engine.store.writer import (
    BatchRows,
    FullSeqRows,
    ShardWriter,
    create_grad_arrays,
)

if TYPE_CHECKING:
    import zarr


@dataclass
class _Job:
    """What every batch of one capture needs (fixed for the whole run)."""

    adapter: VLMAdapter
    plan: Plan
    layout: StoreLayout
    conditions: list[Condition]
    cand_ids: torch.Tensor
    max_new_tokens: int
    recorder: Recorder
    fullseq: set[int] = field(default_factory=set)
    tokens: int = 0
    grad: bool = False
    on_bad: str = "error"  # 'skip': examples whose inputs fail are committed as skipped
    skip_marks: bool = False  # the store has commit/skipped: write each shard's marks
    skipped: int = 0
    tried: int = 0  # examples run so far (skipped ones included)
    scorer: str = "priorscope"  # scoring.SCORERS
    # --answer-from candidates: read one-token answers at the prefill (None: always generate).
    answer_tokens: dict[str, int | None] | None = None
    vocabulary: tuple[str, ...] = ()
    # --preprocess resolved: condition images are preprocessed on the model's device.
    device_pixels: bool = False

    def choices(self, example: Any) -> list[tuple[str, int]] | None:
        """Return the (answer, token id) pairs ``example``'s answer is read from, or None.

        None (generate the answer) unless ``--answer-from candidates`` and every candidate of
        the example (option letters, yes/no, else the benchmark's answer vocabulary) is one
        token of its own. Multiple choice also admits the option texts that are one token and
        that the scorer reads back as their own letter, and yes/no the capitalised words, as
        the model may answer either way. ``vocabulary`` holds every spelling of the open
        questions' gold answers (:func:`scoring.answer_surfaces`).
        """
        if self.answer_tokens is None or not (example.answers or example.is_multiple_choice):
            return None
        try:
            names = list(scoring.candidates(example, self.vocabulary))
        except UsageError:  # an open question and no vocabulary
            return None
        extra: list[str] = []
        if example.is_multiple_choice:
            opts, labels = example.options, example.option_labels
            extra = [
                text
                for text, label in zip(opts, labels, strict=True)
                if scoring.read_choice(text, opts, self.scorer) == label
            ]
        elif names == ["yes", "no"]:
            extra = ["Yes", "No"]
        tokens = [self._token(name) for name in names]
        if None in tokens:
            return None
        pairs = [(name, int(t)) for name, t in zip(names, tokens, strict=True) if t is not None]
        pairs += [(name, t) for name in extra if (t := self._token(name)) is not None]
        if len({t for _, t in pairs}) < len(pairs):  # two answers, one token: not separable
            return None
        return pairs

    def _token(self, answer: str) -> int | None:
        assert self.answer_tokens is not None
        if answer not in self.answer_tokens:
            self.answer_tokens[answer] = self.adapter.answer_token(answer)
        return self.answer_tokens[answer]


def capture(cfg: CaptureConfig, *, adapter: VLMAdapter | None = None) -> str:
    """Return the store path after capturing every example this rank owns into ``cfg.out``.

    Resumes a store written with the same configuration (committed shards are skipped) and
    refuses one written with another. ``adapter`` reuses an already loaded model. With
    ``data_options['on_bad'] == 'skip'`` an example whose image fails to decode or process is
    committed as skipped (``commit/skipped`` holds why) and the capture goes on.
    """
    cfg = validate(cfg)
    rank, world = cfg.shard
    log = RankLog(rank, world)
    group = None
    try:
        adapter, plan, prep = prepare(cfg, adapter)
        if rank != 0 and not store_exists(cfg.out):
            cfg = _wait_for_rank0(cfg, log)
        group, layout = open_capture_store(cfg, adapter, plan, prep)
        _run_shards(cfg, adapter, plan, group, layout, log)
    except KeyboardInterrupt:
        raise _interrupted(cfg, group) from None
    except (PriorscopeError, OSError) as exc:
        disk = _disk_error(exc)
        if disk is None:
            raise
        raise _disk_full(cfg, group, disk) from exc
    return cfg.out  # a local folder or a URL (Path would turn s3:// into s3:/)


def _wait_for_rank0(cfg: CaptureConfig, log: RankLog, note_every_s: float = 30.0) -> CaptureConfig:
    """Wait for rank 0 to create the store, saying so now and every ``note_every_s``.

    Return ``cfg`` with the time left to wait (the store's own wait raises once it is over).
    """
    limit = cfg.wait_for_store_s
    log.say(
        f"waiting up to {limit:.0f} s for rank 0 to create the store {cfg.out} (rank 0 "
        "creates it once its model and data are loaded; start it with --shard 0/N or torchrun)"
    )
    t0 = time.monotonic()
    note = t0 + note_every_s
    while not store_exists(cfg.out) and time.monotonic() - t0 < limit:
        if time.monotonic() >= note:
            log.say(
                f"still waiting for rank 0 to create {cfg.out} ({note - t0:.0f} s of {limit:.0f} s)"
            )
            note += note_every_s
        time.sleep(0.2)
    if store_exists(cfg.out):
        log.say(f"the store {cfg.out} exists now; opening it")
    return dataclasses.replace(cfg, wait_for_store_s=max(limit - (time.monotonic() - t0), 0.0))


def _run_shards(
    cfg: CaptureConfig,
    adapter: VLMAdapter,
    plan: Plan,
    group: zarr.Group,
    layout: StoreLayout,
    log: RankLog,
) -> None:
    """Capture this rank's uncommitted shards of an open store (the model loop)."""
    rank, world = cfg.shard
    done = commit_mask(group)
    owned = rank_shards(layout.n_shards, rank, world)
    todo = [s for s in owned if not done[slice(*layout.shard_range(s))].all()]
    job = _job(cfg, adapter, plan, group, layout)
    _say_owned(log, layout, owned, todo)
    n_todo = sum(layout.shard_range(s)[1] - layout.shard_range(s)[0] for s in todo)
    writer = ShardWriter(group, layout, todo, max_pending=cfg.max_pending)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    work = []  # (shard, batch number in the shard, batches in the shard, store indices)
    for shard in todo:
        batches = batches_of_shard(
            plan.order, plan.examples, *layout.shard_range(shard), cfg.batch_size
        )
        work += [(shard, i, len(batches), batch) for i, batch in enumerate(batches)]
    prefetch = Prefetcher(job, [batch for *_, batch in work], depth=PREFETCH_BATCHES)
    with CaptureProgress(n_todo, enabled=cfg.progress) as progress, recording(job.recorder):
        try:
            reasons: list[str] = []
            for shard, i, n, batch in work:
                start, stop = layout.shard_range(shard)
                if i == 0:
                    reasons = [""] * (stop - start)  # why each example of the shard was skipped
                parts = _batch_rows(job, batch, reasons, start, prefetch.take())
                if i == n - 1 and job.skip_marks:
                    # Before the shard's last rows reach the writer, hence before its commit.
                    write_skip_marks(group, start, reasons)
                for rows in parts:
                    writer.put(rows)
                progress.advance(len(batch), job.tokens, writer.bytes_written)
        except BaseException:
            prefetch.close()
            writer.abort()  # keep the original error; finished shards stay committed
            raise
        prefetch.close()
        writer.close()
        progress.advance(0, job.tokens, writer.bytes_written)
    skipped = f", {job.skipped} skipped (--on-bad skip)" if job.skipped else ""
    if todo:
        log.say(
            f"done: wrote {len(todo)} shards ({n_todo} examples{skipped}) in "
            f"{time.perf_counter() - t0:.1f} s"
        )


def _job(
    cfg: CaptureConfig, adapter: VLMAdapter, plan: Plan, group: zarr.Group, layout: StoreLayout
) -> _Job:
    """Return the fixed state of the model loop (creates the optional arrays it writes)."""
    on_bad = str(cfg.data_options.get("on_bad", "error"))
    if cfg.grad:
        create_grad_arrays(group, layout)
    if on_bad == "skip":
        create_skip_array(group, layout.n_examples, layout.shard_examples)
    return _Job(
        adapter=adapter,
        plan=plan,
        layout=layout,
        conditions=[Condition.from_json(c) for c in _attr_list(group, "conditions")],
        cand_ids=torch.tensor(
            adapter.candidate_token_ids(layout.candidates) if layout.candidates else [0],
            device=adapter.device,
        ),
        max_new_tokens=cfg.max_new_tokens,
        recorder=Recorder(adapter, layout.layers, layout.reductions, layout.fullseq.layers),
        fullseq=set(layout.fullseq.examples),
        grad=cfg.grad,
        scorer=cfg.scorer,
        answer_tokens={} if cfg.answer_from == "candidates" else None,
        vocabulary=scoring.answer_surfaces(plan.examples)
        if cfg.answer_from == "candidates"
        else (),
        on_bad=on_bad,
        device_pixels=device_preprocessing(cfg.preprocess, adapter),
        # Marks are written whenever the store has the array (whatever this run's policy),
        # so a shard's marks never depend on which run computed it.
        skip_marks=has_skip_marks(group),
    )


def _attr_list(group: zarr.Group, name: str) -> list[Any]:
    value: Any = group.attrs[name]
    return list(value)


def _say_owned(log: RankLog, layout: StoreLayout, owned: list[int], todo: list[int]) -> None:
    """Tell what this rank owns and what it will do (sharded captures only)."""
    if not owned:
        log.say(
            f"owns no shard: the store has {layout.n_shards} shard(s) of "
            f"{layout.shard_examples} examples and there are more ranks; nothing to do "
            "(a smaller --shard-examples gives every rank work)"
        )
        return
    rows = [i for s in owned for i in range(*layout.shard_range(s))]
    log.say(
        f"owns {len(owned)} of {layout.n_shards} shards ({describe_runs(owned)}): {len(rows)} "
        f"examples, store rows {describe_runs(rows)}; {len(owned) - len(todo)} already "
        f"committed, capturing {len(todo)}"
    )


# What an example's own inputs can raise while its images are decoded, blurred or encoded by
# the processor (a truncated PNG, a degenerate size); anything else is not the example's fault.
INPUT_ERRORS = (DataError, KernelError, ValueError)
ALL_BAD_LIMIT = 16  # this many examples skipped and none captured: not the data's fault


def _batch_rows(
    job: _Job,
    batch: list[int],
    reasons: list[str],
    start: int,
    prepared: Prepared | BaseException | None = None,
) -> list[BatchRows]:
    """Return the rows of ``batch``: one BatchRows, or the usable and the skipped ones.

    ``prepared`` is the batch's model inputs made ahead by the :class:`Prefetcher` (or the
    error making them raised; None: make them here).

    When the batch fails on its inputs, each example is tried alone to find the culprits.
    Under ``on_bad == 'error'`` the first is named in a DataError that says how to go on;
    under ``'skip'`` the others are captured without them and ``reasons`` says why.
    """
    job.tried += len(batch)
    try:
        return [run_batch(job, batch, prepared)]
    except INPUT_ERRORS as exc:
        bad = _bad_examples(job, batch)
        if not bad:
            raise
        if job.on_bad != "skip":
            idx, why = next(iter(bad.items()))
            ex = job.plan.example_at(idx)
            raise DataError(
                f"Expected every example's image to decode and process. Got example {ex.id!r} "
                f"(store row {idx}, data row {_data_row(ex, job.plan.order[idx])}): {why} "
                "The capture stopped there; shards committed so far are kept. Pass --on-bad "
                "skip to record such examples as skipped and go on: re-run the same command "
                "with --on-bad skip added."
            ) from exc
        for idx, why in bad.items():
            reasons[idx - start] = why
        job.skipped += len(bad)
        if job.skipped == job.tried >= ALL_BAD_LIMIT:
            raise DataError(
                f"Expected most examples to capture. Got all of the first {job.tried} skipped "
                f"(the last: {why}). That points at the model or the options rather than the "
                "data (a processor that refuses these image sizes?); stopping instead of "
                "skipping everything. Check one example with 'priorscope data check'."
            ) from exc
        good = [i for i in batch if i not in bad]
        parts = [_void_rows(job, sorted(bad))]
        return [run_batch(job, good), *parts] if good else parts


def _data_row(ex: Any, dataset_index: int) -> int:
    return ex.source.row if getattr(ex, "source", None) is not None else dataset_index


def _bad_examples(job: _Job, batch: list[int]) -> dict[int, str]:
    """Return {store index: reason} of the examples that fail alone (in batch order)."""
    bad = {}
    for idx in batch:
        try:
            run_batch(job, [idx])
        except INPUT_ERRORS as exc:
            bad[idx] = f"{type(exc).__name__}: {exc}"
    return bad


def _void_rows(job: _Job, indices: list[int]) -> BatchRows:
    """Return the rows of skipped examples: no values (NaN, "", -1), so the shard completes."""
    lay, b = job.layout, len(indices)
    c, k = len(lay.conditions), max(len(lay.candidates), 1)
    nan = float("nan")
    hidden = torch.full((b, *lay.hidden_shape()[1:]), nan, dtype=torch_dtype(lay.hidden_dtype))
    rows = BatchRows(
        indices=np.asarray(indices, dtype=np.int64),
        raw=np.full((b, c), "", dtype=object),
        answer=np.full((b, c), "", dtype=object),
        extracted=np.zeros((b, c), dtype=bool),
        score=np.full((b, c), nan, dtype=np.float32),
        cand_logprob=np.full((b, c, k), nan, dtype=np.float32),
        hidden=to_storage(hidden),
    )
    fs = lay.fullseq
    grad = job.grad
    for idx in (i for i in indices if i in job.fullseq):
        n = fs.lengths[fs.examples.index(idx)]
        shape = (n, len(fs.conditions), len(fs.layers), lay.d_model)
        values = torch.full(shape, nan, dtype=torch_dtype(lay.hidden_dtype))
        rows.fullseq[idx] = FullSeqRows(
            values=to_storage(values).copy(),
            kind=np.zeros(n, dtype=np.int8),
            input_ids=np.zeros(n, dtype=np.int64),
            position_ids=np.zeros((fs.rope_rows, n), dtype=np.int64),
            grad=np.full(shape, nan, dtype=np.float32) if grad else None,
        )
    if grad:
        rows.grad_last = np.full((b, c, len(lay.layers), lay.d_model), nan, dtype=np.float32)
        rows.grad_targets = np.full((b, 2), -1, dtype=np.int64)
    return rows


def _disk_error(exc: BaseException) -> OSError | None:
    """Return the full-disk or read-only OSError behind ``exc`` (its cause chain), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _kept(group: zarr.Group | None, cfg: CaptureConfig) -> str:
    """Return what a stopped capture kept, read from the store's commit log."""
    if group is None:
        return f"Nothing was written yet (the store {cfg.out} was not opened)."
    try:
        done = commit_mask(group)
    except PriorscopeError:
        return f"The store {cfg.out} keeps what was committed before."
    return (
        f"Kept: {int(done.sum())} of {done.size} examples committed in {cfg.out} (whole shards, "
        "each complete and valid); the rest is recomputed on resume."
    )


def _interrupted(cfg: CaptureConfig, group: zarr.Group | None) -> CaptureInterrupted:
    err = CaptureInterrupted(
        f"Capture interrupted (Ctrl-C). {_kept(group, cfg)} Resume by running the same "
        "command again."
    )
    err.resumable = True  # the CLI adds the exact command
    return err


def _disk_full(cfg: CaptureConfig, group: zarr.Group | None, exc: OSError) -> StoreError:
    what = {
        errno.EROFS: "the file system is read-only",
        errno.EFBIG: "a file grew past the size limit",
    }.get(exc.errno or 0, "the disk is full")
    err = StoreError(
        f"Expected to write the store {cfg.out}. Got '{exc.strerror}' ([Errno {exc.errno}]"
        f"{f' on {exc.filename}' if exc.filename else ''}) instead: {what}. {_kept(group, cfg)} "
        "Free space on that disk (or make it writable), then resume with the same command; or "
        "pass another --out on a disk with room to start a new capture there."
    )
    err.resumable = True
    return err


@dataclass
class Prepared:
    """The model inputs of one batch: per group of conditions, the encoded batch and its kinds.

    Everything before the model runs (image decode, blur ladder, processor, token kinds), so
    that a :class:`Prefetcher` can make it for the next batch while this one is on the model.
    """

    indices: list[int]
    examples: list[Any]
    groups: list[tuple[list[int], dict[str, torch.Tensor], torch.Tensor]]


def prepare_batch(job: _Job, indices: Sequence[int]) -> Prepared:
    """Return the model inputs of a batch (store indices, same image size), every condition.

    'none' rows have no image tokens (a processor cannot mix them with image rows), so the
    conditions form at most two groups, each encoded as one condition-major batch.
    """
    examples = [job.plan.example_at(i) for i in indices]
    device = job.adapter.device
    tensors = condition_tensors(examples, job.conditions, device) if job.device_pixels else None
    images = condition_images(examples, job.conditions, device) if tensors is None else None
    names = [cond.name for cond in job.conditions]
    groups = [
        [ci for ci, cond in enumerate(job.conditions) if (cond.kind == "none") == is_none]
        for is_none in (False, True)
    ]
    encoded = []
    for group in (g for g in groups if g):
        if tensors is not None and job.conditions[group[0]].kind != "none":
            batch = _encode_on_device(job, examples, [tensors[names[ci]] for ci in group])
        else:
            if images is None:  # the 'none' group of a batch preprocessed on the device
                flat_images: list[Any] = [None] * (len(examples) * len(group))
            else:
                flat_images = [img for ci in group for img in images[names[ci]]]
            batch = job.adapter.encode(examples * len(group), flat_images)
        kinds = job.adapter.token_kinds(batch).to(job.adapter.device)
        encoded.append((group, batch, kinds))
    return Prepared(list(indices), examples, encoded)


def device_preprocessing(preprocess: str, adapter: VLMAdapter) -> bool:
    """Return whether condition images are preprocessed on the model's device (``--preprocess``).

    ``device`` needs the Qwen2-VL family's PIL image processor with its default steps (refused
    otherwise, with the reason); ``auto`` uses it on a CUDA device where it is allowed.
    """
    if preprocess == "host":
        return False
    from priorscope.engine.models.qwen2_vl import device_pixel_values

    processor = getattr(adapter, "processor", None)
    try:  # a 28 x 28 probe on the host: refuses what device preprocessing cannot reproduce
        device_pixel_values(
            getattr(processor, "image_processor", None),
            torch.zeros(1, 3, 28, 28, dtype=torch.uint8),
        )
    except ModelError as exc:
        if preprocess == "device":
            raise UsageError(
                f"Expected a model whose images can be preprocessed on the device for "
                f"--preprocess device. Got {exc} Use --preprocess host (or auto)."
            ) from None
        return False
    return preprocess == "device" or adapter.device.type == "cuda"


def _encode_on_device(
    job: _Job, examples: list[Any], images: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Return the encoded batch of ``examples`` under each condition's ``images`` (in order).

    The text side (ids, mask, token layout) is the processor's, made once from the clean
    images: every condition has the same image sizes, so the same tokens. The pixels of each
    condition are made on the device by :func:`device_pixel_values`, equal to the processor's.
    """
    from priorscope.engine.models.qwen2_vl import device_pixel_values

    base = job.adapter.encode(examples, [ex.image for ex in examples])
    processor = job.adapter.processor.image_processor
    pixels, grids = zip(*(device_pixel_values(processor, x) for x in images), strict=True)
    out: dict[str, torch.Tensor] = {}
    for key, value in base.items():
        if key == "pixel_values":
            out[key] = torch.cat(pixels).to(value.dtype)
        elif key == "image_grid_thw":
            out[key] = torch.cat(grids).to(value.device)
        else:
            out[key] = torch.cat([value] * len(images))
    return out


# Batches prepared ahead of the one on the model: one is enough to hide preparation that is
# shorter than the model's share, and bounds the memory held to one batch's inputs.
PREFETCH_BATCHES = 1


class Prefetcher:
    """Prepare batches in order on one background thread, at most ``depth`` ahead of use.

    :meth:`take` returns the next batch's :class:`Prepared`, or the exception preparing it
    raised (the caller re-raises it where the batch runs, so the on-bad handling is the same
    as without prefetching). With ``depth == 0`` nothing is prepared ahead (take returns None).
    """

    def __init__(self, job: _Job, batches: Sequence[Sequence[int]], *, depth: int) -> None:
        self._job = job
        self._todo = [list(b) for b in batches]
        self._next = 0
        self._depth = depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="priorscope-prep") if depth else None
        self._pending: deque[Future[Prepared]] = deque()
        self._fill()

    def _fill(self) -> None:
        if self._pool is None:
            return
        while len(self._pending) < self._depth and self._next < len(self._todo):
            self._pending.append(
                self._pool.submit(prepare_batch, self._job, self._todo[self._next])
            )
            self._next += 1

    def take(self) -> Prepared | BaseException | None:
        """Return the next batch's inputs (or its error); start preparing the one after it."""
        if not self._pending:
            return None
        future = self._pending.popleft()
        self._fill()  # the worker goes on to the next batch while this one is on the model
        try:
            return future.result()
        except Exception as exc:  # re-raised by run_batch, on the model loop's thread
            return exc

    def close(self) -> None:
        """Drop what is not started and wait for the batch in progress (at most one)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def run_batch(
    job: _Job, indices: Sequence[int], prepared: Prepared | BaseException | None = None
) -> BatchRows:
    """Return the rows of one batch (store indices, same image size) for every condition.

    Every condition of the batch runs in one forward: the condition rows share the text and,
    blur keeping the image size, the token layout, so stacking them (condition-major) leaves
    each row's padding as it is and pays the per-call cost of ``generate`` once, not per
    condition. ``prepared`` is the batch's inputs made ahead (or the error making them raised).
    """
    if isinstance(prepared, BaseException):
        raise prepared
    if prepared is None or prepared.indices != list(indices):
        prepared = prepare_batch(job, indices)
    examples = prepared.examples
    names = [cond.name for cond in job.conditions]
    b, c = len(indices), len(names)
    choices = [job.choices(ex) for ex in examples]
    decode = any(ch is None for ch in choices)  # else every answer is read at the prefill
    full_rows: dict[int, dict[str, Any]] = {}
    texts, parts, logit_parts, batches = [""] * (b * c), [], [], []
    order: list[int] = []
    for group, batch, kinds in prepared.groups:
        got, reduced, logits = _forward(job, indices, group, batch, kinds, full_rows, decode)
        for k, ci in enumerate(group):
            texts[ci * b : (ci + 1) * b] = got[k * b : (k + 1) * b]
        parts.append(reduced)
        logit_parts.append(logits)
        batches.append((group, batch))
        order += group
    # Back to condition order (row ci * b + r), whatever the grouping.
    perm = torch.tensor([order.index(ci) * b + r for ci in range(c) for r in range(b)])
    reduced = torch.cat(parts)[perm.to(parts[0].device)]
    logits = torch.cat(logit_parts)[perm.to(logit_parts[0].device)]
    raw = np.asarray(texts, dtype=object).reshape(c, b).T.copy()
    answer = np.full((b, c), "", dtype=object)
    extracted = np.zeros((b, c), dtype=bool)
    score = np.zeros((b, c), dtype=np.float32)
    cand = torch.log_softmax(logits, dim=-1)[:, job.cand_ids].view(c, b, -1).transpose(0, 1)
    if job.answer_tokens is not None:
        _read_answers(raw, logits.view(c, b, -1), choices)
    for row, ex in enumerate(examples):
        for ci in range(c):
            if not ex.answers:  # capturable, not scorable: the score stays NaN
                score[row, ci] = np.nan
                continue
            result = scoring.score(ex, raw[row, ci], job.scorer)
            answer[row, ci] = result.answer or ""
            extracted[row, ci], score[row, ci] = bool(result.extracted), float(result.score)
    stacked = reduced.view(c, b, *reduced.shape[1:]).transpose(0, 1)
    stacked = stacked.to(torch_dtype(job.layout.hidden_dtype)).contiguous()
    cand = cand.contiguous()
    if not any(ex.has_image for ex in examples):
        _only_none(job, (raw, answer, extracted, score, cand, stacked), full_rows)
    rows = BatchRows(
        indices=np.asarray(indices, dtype=np.int64),
        raw=raw,
        answer=answer,
        extracted=extracted,
        score=score,
        cand_logprob=cand.float().cpu().numpy(),
        fullseq=_fullseq_rows(job, full_rows),
    )
    if job.grad:
        _add_gradients(job, indices, examples, batches, answer, rows)
    _hand_over_hidden(rows, stacked)
    return rows


def _only_none(job: _Job, columns: tuple[Any, ...], full_rows: dict[int, dict[str, Any]]) -> None:
    """Mark every image condition of a text-only batch as not applicable, in place.

    A text-only row has no image to blur: only ``none`` means something for it. Its other
    columns would merely repeat ``none`` and pass for evidence, so they hold NaN scores, NaN
    states and empty answers instead (the decay analysis leaves NaN scores out).
    """
    raw, answer, extracted, score, cand, stacked = columns
    for ci, cond in enumerate(job.conditions):
        if cond.kind == "none":
            continue
        raw[:, ci], answer[:, ci], extracted[:, ci] = "", "", False
        score[:, ci], cand[:, ci], stacked[:, ci] = np.nan, float("nan"), float("nan")
        for entry in full_rows.values():
            if cond.name in entry["values"]:
                entry["values"][cond.name] = torch.full_like(entry["values"][cond.name], np.nan)


def _add_gradients(
    job: _Job,
    indices: Sequence[int],
    examples: Sequence[Any],
    batches: Sequence[tuple[list[int], dict[str, torch.Tensor]]],
    answer: np.ndarray,
    rows: BatchRows,
) -> None:
    """Put the margin gradients of every condition into ``rows`` (``--grad``).

    One forward and backward per encoded batch the answers came from (its conditions ``group``,
    rows condition-major). The prior
    is the answer under ``total`` when the store has it, as patching reads it
    (``store_targets``); a canonical answer in the metadata wins either way.
    """
    from priorscope.engine.capture.gradients import batch_gradients, batch_targets
    from priorscope.engine.patch.targets import Targets

    names = [cond.name for cond in job.conditions]
    b, c = len(indices), len(names)
    prior = [str(a) for a in answer[:, names.index("total")]] if "total" in names else None
    targets = batch_targets(examples, prior, job.layout.candidates)
    cand_ids = job.cand_ids.tolist() if job.layout.candidates else []
    fs = job.layout.fullseq
    last = np.zeros((b, c, len(job.layout.layers), job.adapter.d_model), dtype=np.float32)
    full: dict[int, dict[str, np.ndarray]] = {}
    for group, batch in batches:
        n = len(group)
        flat = Targets(np.tile(targets.gold, n), np.tile(targets.prior, n))
        keep = [
            k * b + row
            for k, ci in enumerate(group)
            if names[ci] in fs.conditions
            for row, i in enumerate(indices)
            if i in job.fullseq
        ]
        got = batch_gradients(
            job.adapter, batch, flat, cand_ids, job.layout.layers, fs.layers if keep else (), keep
        )
        for k, ci in enumerate(group):
            last[:, ci] = got.last[k * b : (k + 1) * b]
        for r in keep:
            full.setdefault(indices[r % b], {})[names[group[r // b]]] = got.full[r]
    rows.grad_last = last
    rows.grad_targets = np.stack([targets.gold, targets.prior], axis=1).astype(np.int64)
    for idx, parts in full.items():
        rows.fullseq[idx].grad = np.stack([parts[name] for name in fs.conditions], axis=1)


def _read_answers(
    raw: np.ndarray, logits: torch.Tensor, choices: Sequence[list[tuple[str, int]] | None]
) -> None:
    """Put each read-at-prefill answer into ``raw`` [b, C]: the answer whose token has the
    largest logit at the answer position (the first on ties). ``logits`` is [C, b, V]."""
    for row, pairs in enumerate(choices):
        if pairs is None:
            continue
        ids = torch.tensor([t for _, t in pairs], device=logits.device)
        best = logits[:, row, ids].argmax(dim=1).tolist()
        raw[row] = [pairs[k][0] for k in best]


def _forward(
    job: _Job,
    indices: Sequence[int],
    group: Sequence[int],
    batch: dict[str, torch.Tensor],
    kinds: torch.Tensor,
    full_rows: dict[int, dict[str, Any]],
    decode: bool = True,
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Run conditions ``group`` in one condition-major encoded batch (row ``k * b + r`` is
    condition ``group[k]`` of example r; ``kinds`` its token kinds).

    Return (answers, reductions [rows, layer, reduction, d_model], answer-position logits
    [rows, V]). Without ``decode`` only the prefill runs and the answers are empty.
    """
    adapter, rec, fs = job.adapter, job.recorder, job.layout.fullseq
    b = len(indices)
    wanted = [
        (k * b + row, i, job.conditions[ci].name)
        for k, ci in enumerate(group)
        if job.conditions[ci].name in fs.conditions
        for row, i in enumerate(indices)
        if i in job.fullseq
    ]
    rec.arm(kinds, keep_full=bool(wanted))
    if decode:
        texts = adapter.generate(batch, max_new_tokens=job.max_new_tokens)
    else:
        adapter.prefill(batch)
        texts = [""] * int(batch["input_ids"].shape[0])
    missing = rec.missing()
    if missing:
        raise ModelError(
            f"Expected every hooked module to run during the prefill. Got no call for {missing}. "
            "The model's generate() must run the language model's decoder layers and lm_head."
        )
    assert rec.reduced is not None and rec.logits is not None
    job.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else kinds.numel()
    if wanted:
        _collect_full(job, wanted, batch, kinds, full_rows)
    reduced, logits = rec.reduced, rec.logits
    rec.disarm()
    return texts, reduced, logits


def _collect_full(
    job: _Job,
    wanted: list[tuple[int, int, str]],
    batch: dict[str, torch.Tensor],
    kinds: torch.Tensor,
    full_rows: dict[int, dict[str, Any]],
) -> None:
    """Keep the unpadded full-sequence rows (batch row, store index, condition) asked for."""
    rec, fs = job.recorder, job.layout.fullseq
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    for row, idx, cond in wanted:
        keep = mask[row]
        entry = full_rows.setdefault(idx, {"values": {}})
        ids = batch["input_ids"][row, keep].cpu()
        if "input_ids" in entry and not torch.equal(entry["input_ids"], ids):
            raise ModelError(
                f"Expected condition {cond} to give the same tokens as the first full-"
                f"sequence condition for example {idx} (blur keeps the image size). Got "
                "different token ids; this model's processor depends on pixel values."
            )
        entry["input_ids"], entry["kind"] = ids, kinds[row, keep].cpu()
        if rec.position_ids is not None:
            entry["position_ids"] = rec.position_ids[:, row, keep].cpu()
        entry["values"][cond] = torch.stack(
            [rec.full[layer][row, keep] for layer in fs.layers], dim=1
        )  # [token, fs_layer, d_model]


def _fullseq_rows(job: _Job, full_rows: dict[int, dict[str, Any]]) -> dict[int, FullSeqRows]:
    """Return FullSeqRows per store index in storage dtype (one host copy per example)."""
    fs, out = job.layout.fullseq, {}
    dtype = torch_dtype(job.layout.hidden_dtype)
    for idx, entry in full_rows.items():
        values = torch.stack([entry["values"][c] for c in fs.conditions], dim=1)
        pos = entry.get("position_ids")
        if pos is None:
            pos = torch.arange(values.shape[0]).unsqueeze(0)
        out[idx] = FullSeqRows(
            values=to_storage(values.to(dtype).cpu()).copy(),
            kind=entry["kind"].numpy().astype(np.int8),
            input_ids=entry["input_ids"].numpy().astype(np.int64),
            position_ids=pos.numpy().astype(np.int64).reshape(fs.rope_rows, -1),
        )
    return out


def _hand_over_hidden(rows: BatchRows, stacked: torch.Tensor) -> None:
    """Start the batch's single device-to-host copy; the writer thread waits for it."""
    if stacked.device.type != "cuda":
        rows.hidden = to_storage(stacked.cpu())
        return
    host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
    host.copy_(stacked, non_blocking=True)
    event = torch.cuda.Event()
    event.record()

    def wait() -> np.ndarray:
        event.synchronize()
        return to_storage(host)

    rows.hidden_fn = wait


__all__ = ["capture", "run_batch"]
