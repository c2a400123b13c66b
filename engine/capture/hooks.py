"""Forward hooks that reduce the residual stream on the device while the model runs.

Hooks exist only inside :func:`recording`, which removes them in ``finally``. Only the first call
of each hooked module after :meth:`Recorder.arm` is recorded: during ``generate`` that is the
prefill over the whole prompt, so one prefill gives the hidden states, the answer-position
logits and the greedy answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from priorscope.engine.errors import ModelError
from priorscope.engine.models.base import TOKEN_IMAGE, TOKEN_TEXT, VLMAdapter


def _tensor_out(output: Any) -> torch.Tensor:
    """Return the hidden-state tensor of a decoder layer's output (a tensor or a tuple)."""
    return output[0] if isinstance(output, tuple | list) else output


def reduce_sites(
    hidden: torch.Tensor, kinds: torch.Tensor, reductions: Sequence[str]
) -> torch.Tensor:
    """Return site reductions [batch, reduction, d_model] (float32) of ``hidden`` [batch, seq, d].

    ``last`` is position -1 (left padding puts the answer position there); the means are over
    positions of that token kind, NaN where a row has none (``image_mean`` without an image).
    """
    h = hidden.float()
    out = []
    for name in reductions:
        if name == "last":
            out.append(h[:, -1])
            continue
        kind = TOKEN_IMAGE if name == "image_mean" else TOKEN_TEXT
        mask = (kinds == kind).to(h.dtype)
        count = mask.sum(dim=1, keepdim=True)
        total = torch.einsum("bt,btd->bd", mask, h)
        out.append(total / count)  # 0/0 gives NaN: no such tokens in that row
    return torch.stack(out, dim=1)


class Recorder:
    """Collects, per armed forward, reductions [batch, layer, reduction, d_model] and more.

    ``layers`` use the store convention (-1 is the input of decoder layer 0). ``full_layers``
    are the layers whose whole sequence [batch, seq, d_model] is also kept for that forward.
    """

    def __init__(
        self,
        adapter: VLMAdapter,
        layers: Sequence[int],
        reductions: Sequence[str],
        full_layers: Sequence[int] = (),
    ) -> None:
        self.adapter = adapter
        self.layers = list(layers)
        self.reductions = list(reductions)
        self.full_layers = list(full_layers)
        self._slot = {layer: i for i, layer in enumerate(self.layers)}
        self._armed = False
        self._kinds: torch.Tensor | None = None
        self._keep_full = False
        self.reduced: torch.Tensor | None = None
        self.full: dict[int, torch.Tensor] = {}
        self.logits: torch.Tensor | None = None
        self.position_ids: torch.Tensor | None = None
        self._seen: set[str] = set()

    def arm(self, kinds: torch.Tensor, *, keep_full: bool = False) -> None:
        """Prepare to record the next forward; ``kinds`` [batch, seq] on the model's device."""
        b = kinds.shape[0]
        self._kinds = kinds
        self._keep_full = keep_full and bool(self.full_layers)
        self.reduced = torch.full(
            (b, len(self.layers), len(self.reductions), self.adapter.d_model),
            float("nan"),
            device=kinds.device,
        )
        self.full, self.logits, self.position_ids = {}, None, None
        self._seen = set()
        self._armed = True

    def disarm(self) -> None:
        """Stop recording: later calls (decoding steps, unrelated forwards) are ignored."""
        self._armed = False
        self._kinds = None

    def missing(self) -> list[str]:
        """Return the hooked parts that did not fire during the armed forward."""
        want = {f"layer{layer}" for layer in self.layers} | {"head"}
        return sorted(want - self._seen)

    def _first(self, key: str) -> bool:
        if not self._armed or key in self._seen:
            return False
        self._seen.add(key)
        return True

    def record(self, layer: int, hidden: torch.Tensor) -> None:
        """Reduce ``hidden`` [batch, seq, d_model] of ``layer`` (first call per forward only)."""
        if not self._first(f"layer{layer}"):
            return
        if layer in self._slot:
            assert self.reduced is not None and self._kinds is not None
            self.reduced[:, self._slot[layer]] = reduce_sites(hidden, self._kinds, self.reductions)
        if self._keep_full and layer in self.full_layers:
            self.full[layer] = hidden.detach().clone()

    def record_logits(self, logits: torch.Tensor) -> None:
        """Keep the answer-position logits [batch, vocab] of the prefill."""
        if self._first("head"):
            self.logits = logits[:, -1].float()

    def record_positions(self, position_ids: torch.Tensor | None) -> None:
        """Keep the rotary position ids as [rope, batch, seq] (3 rows for Qwen's M-RoPE)."""
        if position_ids is not None and self._first("rope"):
            pos = position_ids if position_ids.dim() == 3 else position_ids.unsqueeze(0)
            self.position_ids = pos.detach().clone()  # [rope, batch, seq]


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Yield ``recorder`` with its hooks registered on the model; remove them on exit."""
    adapter = recorder.adapter
    layers = adapter.decoder_layers()
    handles = []
    wanted = set(recorder.layers) | set(recorder.full_layers)
    try:
        if -1 in wanted:

            def embed_hook(module: Any, args: Any, kwargs: Any) -> None:
                hidden = args[0] if args else kwargs.get("hidden_states")
                if hidden is None:
                    raise ModelError("Expected decoder layer 0 to receive hidden_states. Got none.")
                recorder.record(-1, hidden)

            handles.append(layers[0].register_forward_pre_hook(embed_hook, with_kwargs=True))
        for index, layer in enumerate(layers):
            if index in wanted:
                handles.append(layer.register_forward_hook(_layer_hook(recorder, index)))
        handles.append(
            adapter.lm_head().register_forward_hook(
                lambda module, args, output: recorder.record_logits(output)
            )
        )
        rotary = getattr(adapter.language_model(), "rotary_emb", None)
        if rotary is not None:

            def rope_hook(module: Any, args: Any, kwargs: Any) -> None:
                pos = args[1] if len(args) > 1 else kwargs.get("position_ids")
                recorder.record_positions(pos)

            handles.append(rotary.register_forward_pre_hook(rope_hook, with_kwargs=True))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
        recorder.disarm()


def _layer_hook(recorder: Recorder, index: int) -> Any:
    def hook(module: Any, args: Any, output: Any) -> None:
        recorder.record(index, _tensor_out(output))

    return hook
