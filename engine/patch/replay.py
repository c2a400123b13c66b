"""Exact suffix replay: splice cached states at layer L and run only decoder layers L+1..N.

The vision tower, the image processing and decoder layers 0..L are never re-run: the store holds
the residual stream of every full-sequence example at every stored layer, with the replay inputs
(token kinds, rotary positions including Qwen's 3-D M-RoPE rows). A patch takes the target
condition's residual at layer L, replaces it at a position group with the source condition's
(``state``) or swaps what layer L itself wrote, ``h_L - h_{L-1}`` (``write``), runs the decoder
layers after L with a causal mask, the final norm and the LM head at the answer position.

Batching: every job of a chunk is a row of one left-padded batch sorted by start layer, so the
rows that start at layer L join the batch when decoder layer L+1 runs (one call per decoder
layer per chunk, whatever mix of layers, groups and examples it holds). Last-token patches need
no suffix over the whole sequence: the prefix keys and values of every later layer are computed
once per (example, layer) by the unpatched pass and each patch is a one-token pass over them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from priorscope.engine.errors import ModelError, UsageError
from priorscope.engine.models.base import TOKEN_IMAGE, TOKEN_TEXT

if TYPE_CHECKING:
    from priorscope.engine.models.base import VLMAdapter

STATE, WRITE = "state", "write"
MODES = (STATE, WRITE)
IMAGE, TEXT, LAST = "image", "text", "last"
GROUPS = (IMAGE, TEXT, LAST)


@dataclass(frozen=True)
class PositionGroup:
    """A named set of token positions: ``indices`` (negative counts from the end) or ``select``.

    ``select(kind)`` gets the example's token kinds [token] int8 and returns a bool mask [token];
    the built-in groups are ``image`` (image tokens), ``text`` (question, hint and option tokens)
    and ``last`` (the answer position).
    """

    name: str
    indices: tuple[int, ...] = ()
    select: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise UsageError("Expected a name for a position group. Got an empty string.")
        if self.name in GROUPS and (self.indices or self.select is not None):
            raise UsageError(
                f"Expected a custom position group to use a name other than {GROUPS}. Got "
                f"{self.name!r} with its own positions. Rename it."
            )

    @property
    def is_last(self) -> bool:
        return self.name == LAST

    def mask(self, kind: np.ndarray) -> np.ndarray:
        """Return the bool mask [token] of this group's positions in a sequence of ``kind``."""
        n = len(kind)
        if self.name == IMAGE:
            return np.asarray(kind == TOKEN_IMAGE)
        if self.name == TEXT:
            return np.asarray(kind == TOKEN_TEXT)
        if self.name == LAST:
            out = np.zeros(n, dtype=bool)
            out[-1] = True
            return out
        if self.select is not None:
            return np.asarray(self.select(kind), dtype=bool).reshape(n)
        out = np.zeros(n, dtype=bool)
        for i in self.indices:
            if not -n <= i < n:
                raise UsageError(
                    f"Expected positions of group {self.name!r} within a sequence of {n} tokens. "
                    f"Got index {i}."
                )
            out[i] = True
        return out


def as_group(group: str | PositionGroup) -> PositionGroup:
    """Return a PositionGroup for a built-in group name or a PositionGroup unchanged."""
    if isinstance(group, PositionGroup):
        return group
    if group not in GROUPS:
        from priorscope.engine.errors import did_you_mean

        raise did_you_mean(str(group), GROUPS, "position group")
    return PositionGroup(group)


@dataclass(frozen=True)
class ReplayInput:
    """One example's replay inputs and cached states (any subset of conditions and layers).

    ``states[(condition, layer)]`` is float32 [token, d_model]; ``last[(condition, layer)]`` a
    float32 [d_model] state at the answer position only (a condition without full sequences,
    e.g. ``none``, from the store's ``last`` reduction). ``position_ids`` is [rope, token].
    """

    example: int
    label: str
    kind: np.ndarray
    input_ids: np.ndarray
    position_ids: np.ndarray
    states: dict[tuple[str, int], np.ndarray]
    last: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.kind)

    def full(self, condition: str, layer: int) -> np.ndarray:
        """Return the cached state [token, d] of ``condition`` at ``layer``, or raise."""
        key = (condition, layer)
        if key not in self.states:
            have = sorted({c for c, _ in self.states})
            layers = sorted({v for _, v in self.states})
            raise UsageError(
                f"Expected full-sequence states of condition {condition!r} at layer {layer} for "
                f"example {self.label} (store row {self.example}). Got conditions {have} at "
                f"layers {layers}. Capture with --full-seq-layers covering {layer} (and "
                f"{layer - 1} for --mode write)."
            )
        return self.states[key]

    def last_state(self, condition: str, layer: int) -> np.ndarray:
        """Return the answer-position state [d] of ``condition`` at ``layer``."""
        if (condition, layer) in self.states:
            return self.states[(condition, layer)][-1]
        if (condition, layer) in self.last:
            return self.last[(condition, layer)]
        return self.full(condition, layer)[-1]  # raises with the full message

    def has_full(self, condition: str) -> bool:
        return any(c == condition for c, _ in self.states)


@dataclass(frozen=True)
class Patch:
    """One cell: replace ``group`` of ``target`` by ``source`` at store layer ``layer``."""

    example: int
    layer: int
    group: PositionGroup
    mode: str
    source: str
    target: str


def check_cell(inp: ReplayInput, patch: Patch) -> np.ndarray:
    """Return the group's bool mask [token]; refuse cuts, empty and misaligned groups."""
    group = patch.group
    if patch.mode not in MODES:
        raise UsageError(f"Expected patch mode 'state' or 'write'. Got {patch.mode!r} instead.")
    mask = group.mask(inp.kind)
    if not mask.any():
        raise UsageError(
            f"Expected group {group.name!r} to hold at least one token of example {inp.label} "
            f"(store row {inp.example}). Got none; leave the group out for this example."
        )
    cut = patch.mode == STATE or patch.layer == -1  # at embed the layer's write is the state
    if cut and mask.all():
        raise UsageError(
            f"Expected a position group that leaves some positions unpatched. Got group "
            f"{group.name!r} covering all {inp.n_tokens} tokens of example {inp.label} in "
            f"--mode {patch.mode} at layer {patch.layer}: that is a cut (the output is the source "
            "run's, whatever the layer). Patch image, text or last tokens, or use --mode write."
        )
    if not group.is_last and not inp.has_full(patch.source):
        raise UsageError(
            f"Expected source condition {patch.source!r} to have tokens aligned with target "
            f"{patch.target!r} for group {group.name!r} in example {inp.label} (store row "
            f"{inp.example}). Got no full sequence under {patch.source!r} (its image tokens, if "
            "any, are not at the target's positions). Only last-token patches use this source: "
            "pass --groups last."
        )
    return mask


def check_aligned(target: ReplayInput, source: ReplayInput, group: PositionGroup) -> None:
    """Refuse a source whose positions do not line up with the target's (naming the example)."""
    if group.is_last:
        return  # the answer position is the last token of both
    same = target.n_tokens == source.n_tokens and np.array_equal(target.input_ids, source.input_ids)
    if not same:
        raise UsageError(
            f"Expected source and target of example {target.label} (store row {target.example}) "
            f"to have the same tokens at the same positions for group {group.name!r}. Got "
            f"{source.n_tokens} source tokens and {target.n_tokens} target tokens"
            + ("" if source.n_tokens != target.n_tokens else " with different token ids")
            + ". Use images of the same size (blur keeps it), or patch only the last token."
        )


def patched_state(inp: ReplayInput, patch: Patch, mask: np.ndarray) -> np.ndarray:
    """Return the target's state [token, d] at the patch layer with the group replaced."""
    layer = patch.layer
    out = inp.full(patch.target, layer).copy()
    if patch.mode == STATE or layer == -1:
        source = _source_rows(inp, patch, layer, mask)
        out[mask] = source
        return out
    target_prev = inp.full(patch.target, layer - 1)
    write = _source_rows(inp, patch, layer, mask) - _source_rows(inp, patch, layer - 1, mask)
    out[mask] = target_prev[mask] + write
    return out


def patched_last(inp: ReplayInput, patch: Patch) -> np.ndarray:
    """Return the patched answer-position state [1, d] of a last-token patch."""
    layer, src, tgt = patch.layer, patch.source, patch.target
    if patch.mode == STATE or layer == -1:
        return inp.last_state(src, layer)[None, :].copy()
    write = inp.last_state(src, layer) - inp.last_state(src, layer - 1)
    return (inp.last_state(tgt, layer - 1) + write)[None, :]


def _source_rows(inp: ReplayInput, patch: Patch, layer: int, mask: np.ndarray) -> np.ndarray:
    if patch.group.is_last and not inp.has_full(patch.source):
        return inp.last_state(patch.source, layer)[None, :]
    return inp.full(patch.source, layer)[mask]


# --------------------------------------------------------------------------- the model part


class _KV:
    """A stand-in for a transformers Cache: records or extends keys and values per layer.

    ``record``: keeps what each attention layer computed (the unpatched prefix pass).
    ``extend``: prepends the given prefix keys/values (the one-token pass of a last patch).
    """

    def __init__(self, prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.prefix = prefix
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefix is None:
            self.kept[layer_idx] = (key, value)
            return key, value
        pk, pv = self.prefix[layer_idx]
        return torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)


@dataclass
class _Job:
    """One row of a batch: start layer, states [token, d] (or [1, d]) and its replay inputs."""

    start: int
    hidden: np.ndarray
    position_ids: np.ndarray  # [rope, token]
    inp: ReplayInput
    record: bool = False
    prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    out: np.ndarray | None = None  # final cand log-probs [candidate]
    # Answer-position states [d] after the layers the replayer keeps (``Replayer.keep``).
    states: dict[int, np.ndarray] = field(default_factory=dict)
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class Replayer:
    """Runs decoder suffixes of a loaded adapter from cached states; candidate log-probs out.

    ``cand_ids`` are the candidates' token ids; with ``full_vocab`` the log-probs are normalised
    over the whole vocabulary like the stored ``cand_logprob`` (one LM-head row block per patch,
    at the answer position only), otherwise over the candidates. ``keep`` names decoder layers
    after which every job keeps its answer-position state (``_Job.states``; the last layer's is
    the final norm's input), for read-outs of what a patch left in the residual stream.
    """

    def __init__(
        self,
        adapter: VLMAdapter,
        cand_ids: Sequence[int],
        *,
        batch_size: int = 64,
        full_vocab: bool = True,
        keep: Sequence[int] = (),
    ) -> None:
        self.adapter = adapter
        self.keep = frozenset(int(v) for v in keep)
        self.lm = adapter.language_model()
        self.layers = adapter.decoder_layers()
        self.n_layers = len(self.layers)
        self.norm = adapter.final_norm()
        self.head = adapter.lm_head()
        self.cand_ids = torch.as_tensor(list(cand_ids), dtype=torch.long, device=adapter.device)
        self.batch_size = batch_size
        self.full_vocab = full_vocab
        impl = getattr(self.lm.config, "_attn_implementation", "sdpa")
        if impl not in ("sdpa", "eager"):
            raise ModelError(
                f"Expected the model loaded with attn_implementation 'sdpa' or 'eager' for "
                f"replay. Got {impl!r}. Load it with load_model(..., attn_implementation='sdpa')."
            )
        self.eager = impl == "eager"
        self.calls = 0  # decoder-layer calls made (for benchmarks)
        # float64 models (gradient checks) keep their precision; others report float32.
        self.out_dtype = np.float64 if adapter.dtype == torch.float64 else np.float32

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    # -- masks and positions ---------------------------------------------------------------
    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """Return the attention mask [b, 1, q, k] the attention implementation expects."""
        if not self.eager:
            return allowed
        zero = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        return zero.masked_fill(~allowed, torch.finfo(self.dtype).min)

    def _rope(self, hidden: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin) for positions [rope, b, t] (one row: the usual 1-D positions)."""
        rotary = getattr(self.lm, "rotary_emb", None)
        if rotary is None:
            raise ModelError(
                f"Expected the language model {type(self.lm).__name__} to have rotary_emb. Got "
                "none; replay supports rotary-position decoders (Qwen, LLaMA families)."
            )
        ids = pos if pos.shape[0] > 1 else pos[0]
        cos, sin = rotary(hidden, ids)
        return cos, sin

    def _layer(
        self,
        j: int,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: _KV | None,
    ) -> torch.Tensor:
        self.calls += 1
        out = self.layers[j](
            hidden,
            attention_mask=mask,
            position_embeddings=rope,
            position_ids=None,
            cache=cache,
            use_cache=False,
        )
        return out[0] if isinstance(out, tuple | list) else out

    def _logprobs(self, last: torch.Tensor) -> np.ndarray:
        """Return candidate log-probs [b, candidate] from final residuals [b, d]."""
        normed = self.norm(last)
        if self.full_vocab:
            logits = self.head(normed)
            logits = logits if logits.dtype == torch.float64 else logits.float()
            lp = logits[:, self.cand_ids] - torch.logsumexp(logits, dim=-1, keepdim=True)
        else:
            weight = self.head.weight[self.cand_ids]
            bias = getattr(self.head, "bias", None)
            logits = normed @ weight.T + (0 if bias is None else bias[self.cand_ids])
            lp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), -1)
        return lp.cpu().numpy().astype(self.out_dtype)

    # -- full-sequence suffixes ------------------------------------------------------------
    def run_full(self, jobs: list[_Job]) -> None:
        """Run every job's suffix over its whole sequence; fill ``out`` (and ``kept`` if asked)."""
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i].start, jobs[i].hidden.shape[0]))
        for lo in range(0, len(order), self.batch_size):
            self._run_full_chunk([jobs[i] for i in order[lo : lo + self.batch_size]])

    def _run_full_chunk(self, chunk: list[_Job]) -> None:
        b, t = len(chunk), max(j.hidden.shape[0] for j in chunk)
        d, rope_rows = chunk[0].hidden.shape[1], chunk[0].position_ids.shape[0]
        hidden = np.zeros((b, t, d), dtype=self.out_dtype)
        pos = np.zeros((rope_rows, b, t), dtype=np.int64)
        valid = np.zeros((b, t), dtype=bool)
        for r, job in enumerate(chunk):
            n = job.hidden.shape[0]
            hidden[r, t - n :], pos[:, r, t - n :], valid[r, t - n :] = (
                job.hidden,
                job.position_ids,
                True,
            )
        h = torch.from_numpy(hidden).to(self.device, self.dtype)
        p = torch.from_numpy(pos).to(self.device)
        v = torch.from_numpy(valid).to(self.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=self.device)
        # Padding rows attend to themselves only, so they stay finite and never reach real rows.
        allowed = (causal & (v[:, None, :] | eye)).unsqueeze(1)
        mask = self._mask(allowed)
        cos, sin = self._rope(h, p)
        starts = [job.start for job in chunk]
        record = any(job.record for job in chunk)
        for j in range(min(starts) + 1, self.n_layers):
            k = sum(1 for s in starts if s < j)  # rows are sorted by start: a prefix is active
            cache = _KV() if record else None
            h[:k] = self._layer(j, h[:k], mask[:k], (cos[:k], sin[:k]), cache)
            self._keep(chunk[:k], j, h[:k, -1])
            if cache is not None:
                key, value = cache.kept[self._attn_index(j)]
                for r in range(k):
                    if chunk[r].record:
                        n = chunk[r].hidden.shape[0]
                        # The prefix (every position but the answer) is what a last patch reads.
                        chunk[r].kept[j] = (
                            key[r : r + 1, :, t - n : t - 1],
                            value[r : r + 1, :, t - n : t - 1],
                        )
        self._finish(chunk, h[:, -1])

    def _keep(self, jobs: list[_Job], j: int, last: torch.Tensor) -> None:
        """Keep the answer-position states [k, d] after layer ``j`` when it is kept."""
        if j in self.keep:
            values = last.float().cpu().numpy().copy()  # h is updated in place
            for r, job in enumerate(jobs):
                job.states[j] = values[r]

    def _finish(self, chunk: list[_Job], last: torch.Tensor) -> None:
        """Set each job's log-probs from the final residuals [b, d]."""
        lp = self._logprobs(last)
        for r, job in enumerate(chunk):
            job.out = lp[r]

    def _attn_index(self, j: int) -> int:
        attn = getattr(self.layers[j], "self_attn", None)
        return int(getattr(attn, "layer_idx", j))

    # -- one-token passes over cached prefixes ----------------------------------------------
    def run_last(self, jobs: list[_Job]) -> None:
        """Run one-token passes (answer position) over each job's cached prefix keys/values."""
        order = sorted(range(len(jobs)), key=lambda i: jobs[i].start)
        for lo in range(0, len(order), self.batch_size):
            self._run_last_chunk([jobs[i] for i in order[lo : lo + self.batch_size]])

    def _run_last_chunk(self, chunk: list[_Job]) -> None:
        h = torch.from_numpy(np.stack([job.hidden[-1:] for job in chunk])).to(
            self.device, self.dtype
        )
        pos = np.stack([job.position_ids[:, -1:] for job in chunk], axis=1)  # [rope, b, 1]
        cos, sin = self._rope(h, torch.from_numpy(pos).to(self.device))
        starts = [job.start for job in chunk]
        for j in range(min(starts) + 1, self.n_layers):
            k = sum(1 for s in starts if s < j)
            prefix, mask = self._stack_prefix([job.prefix for job in chunk[:k]], j)
            cache = _KV({self._attn_index(j): prefix})
            h[:k] = self._layer(j, h[:k], mask, (cos[:k], sin[:k]), cache)
            self._keep(chunk[:k], j, h[:k, -1])
        self._finish(chunk, h[:, -1])

    def _stack_prefix(
        self, prefixes: list[dict[int, tuple[torch.Tensor, torch.Tensor]] | None], j: int
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Return left-padded prefix (keys, values) [k, kvh, P, hd] of layer j and the mask."""
        parts = []
        for pre in prefixes:
            if pre is None or j not in pre:
                raise ModelError(f"Expected cached prefix keys for decoder layer {j}. Got none.")
            parts.append(pre[j])
        width = max(p[0].shape[2] for p in parts)
        k0 = parts[0][0]
        keys = k0.new_zeros((len(parts), k0.shape[1], width, k0.shape[3]))
        values = torch.zeros_like(keys)
        allowed = torch.zeros((len(parts), 1, 1, width + 1), dtype=torch.bool, device=self.device)
        allowed[..., -1] = True
        for r, (pk, pv) in enumerate(parts):
            n = pk.shape[2]
            keys[r, :, width - n :], values[r, :, width - n :] = pk[0], pv[0]
            allowed[r, ..., width - n : width] = True
        return (keys, values), self._mask(allowed)


def replay_patches(
    replayer: Replayer,
    inputs: dict[int, ReplayInput],
    patches: Sequence[Patch],
    kept: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[tuple[int, str, int], np.ndarray]]:
    """Return (log-probs [patch, candidate], unpatched log-probs per (example, target, layer)).

    Cells are checked first (cuts, empty groups, misaligned sources); full-sequence patches run
    the suffix over the whole sequence, last-token patches a one-token pass over the prefix of
    the unpatched pass of their (example, target, layer), which is also returned. ``kept``
    [patch, kept layer, d], when given, receives each patched run's answer-position state at
    the replayer's ``keep`` layers (ascending): the target's own below the patch layer, the
    patched state at it, the replayed ones above.
    """
    keep = sorted(replayer.keep)
    if kept is not None and kept.shape[1] != len(keep):
        raise UsageError(
            f"Expected room for {len(keep)} kept layers in 'kept'. Got {kept.shape[1]}; build the "
            "Replayer with the same keep layers."
        )
    for patch in patches:
        check_cell(inputs[patch.example], patch)
    full: list[_Job] = []
    base: dict[tuple[int, str, int], _Job] = {}
    for patch in patches:
        inp = inputs[patch.example]
        if patch.group.is_last:
            key = (patch.example, patch.target, patch.layer)
            if key not in base:
                state = inp.full(patch.target, patch.layer)
                base[key] = _Job(patch.layer, state, inp.position_ids, inp, record=True)
            continue
        state = patched_state(inp, patch, patch.group.mask(inp.kind))
        full.append(_Job(patch.layer, state, inp.position_ids, inp))
    with torch.inference_mode():
        replayer.run_full(full + list(base.values()))
        last = []
        for patch in patches:
            if patch.group.is_last:
                inp = inputs[patch.example]
                prefix = base[(patch.example, patch.target, patch.layer)].kept
                last.append(
                    _Job(
                        patch.layer, patched_last(inp, patch), inp.position_ids, inp, prefix=prefix
                    )
                )
        replayer.run_last(last)
    out = np.zeros((len(patches), len(replayer.cand_ids)), dtype=replayer.out_dtype)
    full_iter, last_iter = iter(full), iter(last)
    for i, patch in enumerate(patches):
        job = next(last_iter) if patch.group.is_last else next(full_iter)
        assert job.out is not None
        out[i] = job.out
        if kept is not None:
            for ki, layer in enumerate(keep):
                kept[i, ki] = _kept_state(inputs[patch.example], patch, job, layer)
    baselines = {key: job.out for key, job in base.items() if job.out is not None}
    return out, baselines


def _kept_state(inp: ReplayInput, patch: Patch, job: _Job, layer: int) -> np.ndarray:
    """Return the patched run's answer-position state after ``layer`` [d]."""
    if layer > patch.layer:
        return job.states[layer]
    if layer == patch.layer:
        return job.hidden[-1]
    if inp.has_full(patch.target):
        return inp.full(patch.target, layer)[-1]
    return inp.last_state(patch.target, layer)


def replay_unpatched(
    replayer: Replayer, inputs: dict[int, ReplayInput], cells: Sequence[tuple[int, str, int]]
) -> np.ndarray:
    """Return log-probs [cell, candidate] replaying (example, condition, layer) unchanged."""
    jobs = [
        _Job(layer, inputs[ex].full(cond, layer), inputs[ex].position_ids, inputs[ex])
        for ex, cond, layer in cells
    ]
    with torch.inference_mode():
        replayer.run_full(jobs)
    return np.stack([job.out for job in jobs if job.out is not None])


__all__ = [
    "GROUPS",
    "IMAGE",
    "LAST",
    "MODES",
    "STATE",
    "TEXT",
    "WRITE",
    "Patch",
    "PositionGroup",
    "ReplayInput",
    "Replayer",
    "as_group",
    "check_aligned",
    "check_cell",
    "patched_last",
    "patched_state",
    "replay_patches",
    "replay_unpatched",
]
