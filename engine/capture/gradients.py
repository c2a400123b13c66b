"""Capture's ``--grad``: gradients of the gold-vs-prior margin with respect to the residual stream.

For each (example, condition) the metric is ``logit[gold] - logit[prior]`` at the answer
position (the log-prob margin of :mod:`priorscope.engine.patch.targets`; the normaliser
cancels). Its gradient with respect to the residual after every stored layer is what
``patch --estimate`` needs for first-order attribution with no model: at the answer position
for every example and layer, and at every position of the full-sequence layers for the
full-sequence examples.

One extra forward and backward per condition and batch, after the answers are known (the prior
of an example without a canonical answer is what the model said under total obfuscation).
Parameters are frozen during the pass and the graph starts at the decoder's input, so neither
the vision tower nor any weight gradient is computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from priorscope.engine.errors import ModelError
from priorscope.engine.models.sites import Write, hooks, site_name
from priorscope.engine.patch.targets import Targets, answer_targets

if TYPE_CHECKING:
    from priorscope.engine.data.example import Example
    from priorscope.engine.models.base import VLMAdapter


@dataclass(frozen=True)
class GradRows:
    """Gradients of one batch and condition.

    ``last`` [batch, layer, d_model] float32 at the answer position for every requested layer
    (zeros for rows without a margin); ``full[row]`` [token, fs_layer, d_model] float32 over the
    row's unpadded tokens, for the rows asked to keep full sequences.
    """

    last: np.ndarray
    full: dict[int, np.ndarray]


def batch_targets(
    examples: Sequence[Example],
    prior_answers: Sequence[str] | None,
    candidates: Sequence[str],
) -> Targets:
    """Return the gold and prior candidate indices of a batch (same rule as the analyses)."""
    return answer_targets(
        [ex.answers for ex in examples],
        [ex.options for ex in examples],
        [dict(ex.metadata) for ex in examples],
        prior_answers,
        candidates,
    )


@contextlib.contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """Turn off requires_grad on every parameter for the duration; restore it after."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def batch_gradients(
    adapter: VLMAdapter,
    batch: dict[str, torch.Tensor],
    targets: Targets,
    cand_ids: Sequence[int],
    layers: Sequence[int],
    full_layers: Sequence[int] = (),
    full_rows: Sequence[int] = (),
) -> GradRows:
    """Return the margin gradients of one encoded batch (left-padded, as ``adapter.encode`` gives).

    ``layers`` and ``full_layers`` are store layers (-1 = embed); ``cand_ids`` the candidates'
    token ids; ``full_rows`` the batch rows whose full-sequence gradients are kept.
    """
    wanted = sorted(set(layers) | set(full_layers))
    b = int(batch["input_ids"].shape[0])
    ids = torch.as_tensor(list(cand_ids), device=adapter.device)
    gold, prior = torch.as_tensor(targets.gold), torch.as_tensor(targets.prior)
    rows = torch.nonzero((gold >= 0) & (prior >= 0)).flatten().to(adapter.device)
    last = np.zeros((b, len(layers), adapter.d_model), dtype=np.float32)
    full_out: dict[int, np.ndarray] = {}
    if rows.numel() == 0 and not full_rows:
        return GradRows(last, full_out)
    kept: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Any:
        return lambda t: kept.__setitem__(layer, t)

    start = Write("embed", lambda h: h.detach().requires_grad_(True))
    reads = {site_name(v): keep(v) for v in wanted}
    with _frozen(adapter.model), torch.enable_grad():
        with hooks(adapter, reads=reads, writes=[start], prefill_only=True) as session:
            out = adapter.model(**batch, logits_to_keep=1, use_cache=False)
            missing = session.missing(list(reads))
        if missing:
            raise ModelError(f"Expected every residual site to run. Got no call for {missing}.")
        logits = out.logits[:, -1].float()
        g_ids, p_ids = ids[gold.clamp(min=0)].to(rows.device), ids[prior.clamp(min=0)]
        metric = (logits[rows, g_ids[rows]] - logits[rows, p_ids.to(rows.device)[rows]]).sum()
        tensors = [kept[v] for v in wanted]
        grads: Sequence[torch.Tensor | None] = (
            torch.autograd.grad(metric, tensors, allow_unused=True)
            if rows.numel()
            else [None] * len(wanted)
        )
    by_layer = {
        v: (g if g is not None else torch.zeros_like(kept[v])).detach().float()
        for v, g in zip(wanted, grads, strict=True)
    }
    for li, v in enumerate(layers):
        last[:, li] = by_layer[v][:, -1].cpu().numpy()
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    for row in full_rows:
        valid = mask[row]
        full_out[row] = (
            torch.stack([by_layer[v][row, valid] for v in full_layers], dim=1).cpu().numpy()
        )
    return GradRows(last, full_out)


def example_gradients(
    adapter: VLMAdapter,
    examples: Sequence[Example],
    conditions: Sequence[Any],
    candidates: Sequence[str],
    prior_answers: Sequence[str] | None,
    layers: Sequence[int],
    full_layers: Sequence[int] = (),
    full_examples: Sequence[int] = (),
    full_conditions: Sequence[str] = (),
    batch_size: int = 8,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Return the gradients ``--grad`` stores, for examples outside a capture loop.

    ``last`` [example, condition, layer, d] and ``full[i]`` [token, fs_condition, fs_layer, d]
    for the indices ``full_examples`` (conditions ``full_conditions``). Examples of one batch
    must share an image size (capture's store order guarantees it).
    """
    from priorscope.engine.capture.images import condition_images

    cand_ids = adapter.candidate_token_ids(list(candidates))
    n = len(examples)
    last = np.zeros((n, len(conditions), len(layers), adapter.d_model), dtype=np.float32)
    parts: dict[int, dict[str, np.ndarray]] = {}
    for lo in range(0, n, batch_size):
        idx = list(range(lo, min(lo + batch_size, n)))
        batch_ex = [examples[i] for i in idx]
        images = condition_images(batch_ex, list(conditions), adapter.device)
        priors = None if prior_answers is None else [prior_answers[i] for i in idx]
        targets = batch_targets(batch_ex, priors, candidates)
        for ci, cond in enumerate(conditions):
            keep = [r for r, i in enumerate(idx) if i in full_examples]
            keep = keep if cond.name in full_conditions else []
            batch = adapter.encode(batch_ex, images[cond.name])
            rows = batch_gradients(
                adapter, batch, targets, cand_ids, layers, full_layers if keep else (), keep
            )
            last[idx, ci] = rows.last
            for r, values in rows.full.items():
                parts.setdefault(idx[r], {})[cond.name] = values
    full = {i: np.stack([p[c] for c in full_conditions], axis=1) for i, p in parts.items()}
    return last, full


__all__ = ["GradRows", "batch_gradients", "batch_targets", "example_gradients"]
