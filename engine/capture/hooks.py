"""The capture recorder: a client of the one hook mechanism (priorscope.engine.models.sites).

It reads the residual sites ``embed`` / ``resid.{i}`` (reduced on the device by
:func:`priorscope.kernels.reduce.reduce_sites`, and kept whole for full-sequence rows), the
``logits`` at the answer position and the rotary ``positions``. Hooks exist only inside
:func:`recording`; they are prefill-only, and :meth:`Recorder.arm` arms them for the next
forward: during ``generate`` that is the prefill over the whole prompt, so one prefill gives the
hidden states, the answer-position logits and the greedy answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from priorscope.engine.models.base import TOKEN_IMAGE, TOKEN_TEXT, VLMAdapter
from priorscope.engine.models.sites import (
    LOGITS,
    POSITIONS,
    HookSession,
    hooks,
    resolvable,
    site_name,
)
from priorscope.kernels.reduce import reduce_sites


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
        self._session: HookSession | None = None
        self._kinds: torch.Tensor | None = None
        self._keep_full = False
        self.reduced: torch.Tensor | None = None
        self.full: dict[int, torch.Tensor] = {}
        self.logits: torch.Tensor | None = None
        self.position_ids: torch.Tensor | None = None

    def reads(self) -> dict[str, list[Callable[[torch.Tensor], None]]]:
        """Return the read hooks by site name (positions only where the model has rotary_emb)."""
        wanted = sorted(set(self.layers) | set(self.full_layers))
        out: dict[str, list[Callable[[torch.Tensor], None]]] = {
            site_name(layer): [self._layer_reader(layer)] for layer in wanted
        }
        out[LOGITS] = [self._record_logits]
        if resolvable(self.adapter, POSITIONS):
            out[POSITIONS] = [self._record_positions]
        return out

    def required(self) -> list[str]:
        """Return the sites that must fire in every armed forward (positions are optional)."""
        return [name for name in self.reads() if name != POSITIONS]

    def arm(self, kinds: torch.Tensor, *, keep_full: bool = False) -> None:
        """Prepare to record the next forward; ``kinds`` [batch, seq] on the model's device."""
        if self._session is None:
            raise RuntimeError("Recorder.arm() called outside `with recording(recorder):`.")
        b = kinds.shape[0]
        self._kinds = kinds
        self._keep_full = keep_full and bool(self.full_layers)
        self.reduced = torch.full(
            (b, len(self.layers), len(self.reductions), self.adapter.d_model),
            float("nan"),
            device=kinds.device,
        )
        self.full, self.logits, self.position_ids = {}, None, None
        self._session.arm()

    def disarm(self) -> None:
        """Stop recording: later calls (decoding steps, unrelated forwards) are ignored."""
        if self._session is not None:
            self._session.disarm()
        self._kinds = None

    def missing(self) -> list[str]:
        """Return the required sites that did not fire during the armed forward."""
        return self._session.missing(self.required()) if self._session else self.required()

    def _layer_reader(self, layer: int) -> Callable[[torch.Tensor], None]:
        def read(hidden: torch.Tensor) -> None:
            if layer in self._slot:
                assert self.reduced is not None and self._kinds is not None
                self.reduced[:, self._slot[layer]] = reduce_sites(
                    hidden,
                    self._kinds,
                    self.reductions,
                    image_kind=TOKEN_IMAGE,
                    text_kind=TOKEN_TEXT,
                )
            if self._keep_full and layer in self.full_layers:
                self.full[layer] = hidden.detach().clone()

        return read

    def _record_logits(self, logits: torch.Tensor) -> None:
        self.logits = logits[:, -1].float()  # the answer position of the prefill

    def _record_positions(self, position_ids: torch.Tensor) -> None:
        self.position_ids = position_ids.detach().clone()  # [rope, batch, seq]


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Yield ``recorder`` with its prefill-only hooks installed; they are removed on exit.

    Nothing is recorded until :meth:`Recorder.arm`.
    """
    with hooks(recorder.adapter, recorder.reads(), prefill_only=True) as session:
        session.disarm()
        recorder._session = session
        try:
            yield recorder
        finally:
            recorder.disarm()
            recorder._session = None


__all__ = ["Recorder", "recording"]
