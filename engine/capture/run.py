"""Run a capture: the model loop on the calling thread, the store writes on a background thread."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from priorscope.engine.capture.config import CaptureConfig, validate
from priorscope.engine.capture.hooks import Recorder, recording
from priorscope.engine.capture.images import condition_images
from priorscope.engine.capture.plan import Plan, batches_of_shard
from priorscope.engine.capture.progress import CaptureProgress
from priorscope.engine.capture.setup import open_capture_store, prepare
from priorscope.engine.conditions import Condition
from priorscope.engine.errors import ModelError
from priorscope.engine.models.base import VLMAdapter
from priorscope.engine.store import commit_mask
from priorscope.engine.store.dtypes import to_storage, torch_dtype
from priorscope.engine.store.layout import StoreLayout, rank_shards
from priorscope.engine.store.writer import (
    BatchRows,
    FullSeqRows,
    ShardWriter,
    create_grad_arrays,
)


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


def capture(cfg: CaptureConfig, *, adapter: VLMAdapter | None = None) -> str:
    """Return the store path after capturing every example this rank owns into ``cfg.out``.

    Resumes a store written with the same configuration (committed shards are skipped) and
    refuses one written with another. ``adapter`` reuses an already loaded model.
    """
    cfg = validate(cfg)
    adapter, plan, prep = prepare(cfg, adapter)
    group, layout = open_capture_store(cfg, adapter, plan, prep)
    rank, world = cfg.shard
    done = commit_mask(group)
    todo = [
        s
        for s in rank_shards(layout.n_shards, rank, world)
        if not done[slice(*layout.shard_range(s))].all()
    ]
    job = _Job(
        adapter=adapter,
        plan=plan,
        layout=layout,
        conditions=[Condition.from_json(c) for c in group.attrs["conditions"]],
        cand_ids=torch.tensor(
            adapter.candidate_token_ids(layout.candidates) if layout.candidates else [0],
            device=adapter.device,
        ),
        max_new_tokens=cfg.max_new_tokens,
        recorder=Recorder(adapter, layout.layers, layout.reductions, layout.fullseq.layers),
        fullseq=set(layout.fullseq.examples),
        grad=cfg.grad,
    )
    if cfg.grad:
        create_grad_arrays(group, layout)
    n_todo = sum(layout.shard_range(s)[1] - layout.shard_range(s)[0] for s in todo)
    writer = ShardWriter(group, layout, todo, max_pending=cfg.max_pending)
    torch.manual_seed(0)
    with CaptureProgress(n_todo, enabled=cfg.progress) as progress, recording(job.recorder):
        try:
            for shard in todo:
                start, stop = layout.shard_range(shard)
                for batch in batches_of_shard(
                    plan.order, plan.examples, start, stop, cfg.batch_size
                ):
                    writer.put(run_batch(job, batch))
                    progress.advance(len(batch), job.tokens, writer.bytes_written)
        except BaseException:
            writer.abort()  # keep the original error; finished shards stay committed
            raise
        writer.close()
        progress.advance(0, job.tokens, writer.bytes_written)
    return cfg.out  # a local folder or a URL (Path would turn s3:// into s3:/)


def run_batch(job: _Job, indices: Sequence[int]) -> BatchRows:
    """Return the rows of one batch (store indices, same image size) for every condition.

    Every condition of the batch runs in one forward: the condition rows share the text and,
    blur keeping the image size, the token layout, so stacking them (condition-major) leaves
    each row's padding as it is and pays the per-call cost of ``generate`` once, not per
    condition.
    """
    from priorscope.engine.data import scoring

    examples = [job.plan.example_at(i) for i in indices]
    images = condition_images(examples, job.conditions, job.adapter.device)
    names = [cond.name for cond in job.conditions]
    b, c = len(indices), len(names)
    full_rows: dict[int, dict[str, Any]] = {}
    # 'none' rows have no image tokens: a processor cannot mix them with image rows.
    groups = [
        [ci for ci, cond in enumerate(job.conditions) if (cond.kind == "none") == is_none]
        for is_none in (False, True)
    ]
    texts, parts, logit_parts, batches = [""] * (b * c), [], [], []
    order: list[int] = []
    for group in (g for g in groups if g):
        flat_images = [img for ci in group for img in images[names[ci]]]
        got, reduced, logits, batch = _forward(
            job, indices, group, examples * len(group), flat_images, full_rows
        )
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
    for row, ex in enumerate(examples):
        for ci in range(c):
            if not ex.answers:  # capturable, not scorable: the score stays NaN
                score[row, ci] = np.nan
                continue
            result = scoring.score(ex, raw[row, ci])
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


def _forward(
    job: _Job,
    indices: Sequence[int],
    group: Sequence[int],
    examples: Sequence[Any],
    images: Sequence[Any],
    full_rows: dict[int, dict[str, Any]],
) -> tuple[list[str], torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Run conditions ``group`` in one condition-major batch (row ``k * b + r`` is condition
    ``group[k]`` of example r).

    Return (answers, reductions [rows, layer, reduction, d_model], answer-position logits
    [rows, V], the encoded batch).
    """
    adapter, rec, fs = job.adapter, job.recorder, job.layout.fullseq
    b = len(indices)
    batch = adapter.encode(examples, images)
    kinds = adapter.token_kinds(batch).to(adapter.device)
    wanted = [
        (k * b + row, i, job.conditions[ci].name)
        for k, ci in enumerate(group)
        if job.conditions[ci].name in fs.conditions
        for row, i in enumerate(indices)
        if i in job.fullseq
    ]
    rec.arm(kinds, keep_full=bool(wanted))
    texts = adapter.generate(batch, max_new_tokens=job.max_new_tokens)
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
    return texts, reduced, logits, batch


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
