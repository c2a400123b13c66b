"""Run a capture: the model loop on the calling thread, the store writes on a background thread."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
from priorscope.engine.store.dtypes import to_storage, torch_dtype
from priorscope.engine.store.layout import StoreLayout, rank_shards
from priorscope.engine.store.writer import BatchRows, FullSeqRows, ShardWriter


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


def capture(cfg: CaptureConfig, *, adapter: VLMAdapter | None = None) -> Path:
    """Return the store path after capturing every example this rank owns into ``cfg.out``.

    Resumes a store written with the same configuration (committed shards are skipped) and
    refuses one written with another. ``adapter`` reuses an already loaded model.
    """
    cfg = validate(cfg)
    adapter, plan, prep = prepare(cfg, adapter)
    group, layout = open_capture_store(cfg, adapter, plan, prep)
    rank, world = cfg.shard
    done = np.asarray(group["commit/done"][:], dtype=bool)
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
    )
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
    return Path(cfg.out)


def run_batch(job: _Job, indices: Sequence[int]) -> BatchRows:
    """Return the rows of one batch (store indices, same image size) for every condition."""
    from priorscope.engine.data import scoring

    examples = [job.plan.example_at(i) for i in indices]
    images = condition_images(examples, job.conditions, job.adapter.device)
    b, c, k = len(indices), len(job.conditions), len(job.cand_ids)
    raw = np.full((b, c), "", dtype=object)
    answer = np.full((b, c), "", dtype=object)
    extracted = np.zeros((b, c), dtype=bool)
    score = np.zeros((b, c), dtype=np.float32)
    cand = torch.empty((b, c, k), device=job.adapter.device)
    hidden = []
    full_rows: dict[int, dict[str, Any]] = {}
    for ci, cond in enumerate(job.conditions):
        texts, reduced, logits = _forward(
            job, indices, examples, images[cond.name], cond, full_rows
        )
        hidden.append(reduced)
        cand[:, ci] = torch.log_softmax(logits, dim=-1)[:, job.cand_ids]
        for row, (ex, text) in enumerate(zip(examples, texts, strict=True)):
            raw[row, ci] = text
            if not ex.answers:  # capturable, not scorable: the score stays NaN
                score[row, ci] = np.nan
                continue
            result = scoring.score(ex, text)
            answer[row, ci] = result.answer or ""
            extracted[row, ci], score[row, ci] = bool(result.extracted), float(result.score)
    stacked = torch.stack(hidden, dim=1).to(torch_dtype(job.layout.hidden_dtype))
    rows = BatchRows(
        indices=np.asarray(indices, dtype=np.int64),
        raw=raw,
        answer=answer,
        extracted=extracted,
        score=score,
        cand_logprob=cand.float().cpu().numpy(),
        fullseq=_fullseq_rows(job, full_rows),
    )
    _hand_over_hidden(rows, stacked)
    return rows


def _forward(
    job: _Job,
    indices: Sequence[int],
    examples: Sequence[Any],
    images: Sequence[Any],
    cond: Condition,
    full_rows: dict[int, dict[str, Any]],
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Return (answers, reductions [b, layer, reduction, d_model], answer-position logits [b, V])."""
    adapter, rec = job.adapter, job.recorder
    batch = adapter.encode(examples, images)
    kinds = adapter.token_kinds(batch).to(adapter.device)
    wanted = [row for row, i in enumerate(indices) if i in job.fullseq]
    keep_full = bool(wanted) and cond.name in job.layout.fullseq.conditions
    rec.arm(kinds, keep_full=keep_full)
    texts = adapter.generate(batch, max_new_tokens=job.max_new_tokens)
    missing = rec.missing()
    if missing:
        raise ModelError(
            f"Expected every hooked module to run during the prefill. Got no call for {missing}. "
            "The model's generate() must run the language model's decoder layers and lm_head."
        )
    assert rec.reduced is not None and rec.logits is not None
    job.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else kinds.numel()
    if keep_full:
        _collect_full(job, indices, wanted, cond, batch, kinds, full_rows)
    reduced, logits = rec.reduced, rec.logits
    rec.disarm()
    return texts, reduced, logits


def _collect_full(
    job: _Job,
    indices: Sequence[int],
    wanted: list[int],
    cond: Condition,
    batch: dict[str, torch.Tensor],
    kinds: torch.Tensor,
    full_rows: dict[int, dict[str, Any]],
) -> None:
    """Keep the unpadded full-sequence rows of the wanted batch rows for this condition."""
    rec, fs = job.recorder, job.layout.fullseq
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    for row in wanted:
        keep = mask[row]
        entry = full_rows.setdefault(indices[row], {"values": {}})
        ids = batch["input_ids"][row, keep].cpu()
        if "input_ids" in entry and not torch.equal(entry["input_ids"], ids):
            raise ModelError(
                f"Expected condition {cond.name} to give the same tokens as the first full-"
                f"sequence condition for example {indices[row]} (blur keeps the image size). Got "
                "different token ids; this model's processor depends on pixel values."
            )
        entry["input_ids"], entry["kind"] = ids, kinds[row, keep].cpu()
        if rec.position_ids is not None:
            entry["position_ids"] = rec.position_ids[:, row, keep].cpu()
        entry["values"][cond.name] = torch.stack(
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
