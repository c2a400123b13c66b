"""Named sites of a VLM and the one hook mechanism that reads and writes them.

Every code path that reads or writes a model's activations goes through :func:`hooks`: the
capture recorder, the organism's training read-outs, its evaluator and layer replacement. A site
is a stable dotted name (TransformerLens style) that the adapter resolves to a module:

- ``embed``: the residual stream entering decoder layer 0 (store layer ``-1``);
- ``resid.{i}``: the residual stream after decoder layer ``i`` (store layer ``i``);
- ``attn.{i}`` / ``mlp.{i}``: what the attention / MLP block of layer ``i`` writes;
- ``vision``: the image tokens as the vision tower hands them to the decoder (merged patches);
- ``logits``: the LM head's output; ``positions``: the rotary position ids (read only).

A read hook gets the site's tensor ``[batch, seq, d]`` (``positions``: ``[rope, batch, seq]``,
the batch axis expanded where the model shares one row; ``vision``: the tower's output as it
is, ``[image tokens, d]`` for Qwen-VL, ``[images, tokens, d]`` for LLaVA; ``logits`` during
``generate``: ``[batch, 1, vocab]``, the last position only). A write hook replaces or adds a
tensor at chosen positions. Hooks exist only inside the context
manager, which removes them in ``finally``; with ``prefill_only`` a hook fires on the first call
of its module after :meth:`HookSession.arm` (the prefill of ``generate``) and never on decode
steps.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from priorscope.engine.errors import ModelError, UnknownNameError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from priorscope.engine.models.base import VLMAdapter

EMBED = "embed"
VISION = "vision"
LOGITS = "logits"
POSITIONS = "positions"
BLOCK_KINDS = ("resid", "attn", "mlp")
_BLOCK = re.compile(r"^(resid|attn|mlp)\.(\d+)$")

ReadFn = Callable[["torch.Tensor"], None]
WriteFn = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Site:
    """A parsed site name: ``kind`` is embed, resid, attn, mlp, vision, logits or positions."""

    kind: str
    layer: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    @property
    def store_layer(self) -> int:
        """Return the store's layer index of a residual site (-1 for ``embed``)."""
        if self.kind == EMBED:
            return -1
        if self.kind == "resid" and self.layer is not None:
            return self.layer
        raise UsageError(f"Expected a residual site (embed or resid.N). Got {self.name!r}.")


def site_name(layer: int) -> str:
    """Return the residual site of a store layer index: ``embed`` for -1, else ``resid.{layer}``."""
    return EMBED if layer == -1 else f"resid.{layer}"


def parse_site(name: str, num_layers: int) -> Site:
    """Return the Site called ``name``; raise UsageError naming the known forms."""
    name = name.strip()
    if name in (EMBED, VISION, LOGITS, POSITIONS):
        return Site(name)
    match = _BLOCK.match(name)
    if match is None:
        raise _unknown_site(name, num_layers)
    layer = int(match.group(2))
    if layer >= num_layers:
        raise UsageError(
            f"Expected a layer between 0 and {num_layers - 1} in site {name!r}. Got {layer} for a "
            f"model with {num_layers} decoder layers."
        )
    return Site(match.group(1), layer)


def _unknown_site(name: str, num_layers: int) -> UnknownNameError:
    """Return the error for an unknown site name, suggesting the closest real sites."""
    import difflib

    known = [EMBED, VISION, LOGITS, POSITIONS]
    known += [f"{kind}.{i}" for kind in BLOCK_KINDS for i in range(num_layers)]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    # 'resid3', 'layer.3', 'blocks.3.hook_resid_post': the layer number is the best clue.
    numbers = [int(n) for n in re.findall(r"\d+", name) if int(n) < num_layers]
    for kind in [k for k in BLOCK_KINDS if k in name.lower()] or ["resid"]:
        guess = f"{kind}.{numbers[0]}" if numbers else None
        if guess and guess not in close:
            close = [guess, *close][:3]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(
        f"Unknown site {name!r}.{hint} Expected one of: embed, vision, logits, positions, "
        f"resid.N, attn.N, mlp.N with N in 0..{num_layers - 1}."
    )


def residual_sites(spec: str | Sequence[str | int], num_layers: int) -> list[str]:
    """Return the canonical residual sites a user filter selects, in layer order.

    ``spec`` is ``all``, a comma list of site names or store layers (``embed,resid.3,5``), a range
    of layers ``0:8:2``, or a sequence of those; duplicates fold. This is the one normaliser
    every stage uses to turn a layer/site filter into site names.
    """
    from priorscope.engine.conditions import parse_layers

    parts = [spec] if isinstance(spec, str) else [str(s) for s in spec]
    layers: set[int] = set()
    for part in parts:
        for piece in part.split(","):
            piece = piece.strip()
            if not piece:
                continue
            if piece.startswith("resid."):
                layers.add(parse_site(piece, num_layers).store_layer)
            else:
                layers.update(parse_layers(piece, num_layers))
    return [site_name(layer) for layer in sorted(layers)]


def resolve(adapter: VLMAdapter, site: Site) -> tuple[nn.Module, str]:
    """Return (module, 'pre' | 'post'): where the site's tensor enters or leaves the model."""
    layers = adapter.decoder_layers()
    if site.kind == EMBED:
        return layers[0], "pre"
    if site.kind == "resid":
        return layers[site.layer], "post"
    if site.kind in ("attn", "mlp"):
        block = layers[site.layer]
        names = ("self_attn", "attn") if site.kind == "attn" else ("mlp", "feed_forward")
        for attr in names:
            module = getattr(block, attr, None)
            if module is not None:
                return module, "post"
        raise ModelError(
            f"Expected decoder layer {site.layer} of {adapter.family} to have one of {names}. Got "
            f"children {[n for n, _ in block.named_children()]}. Add the site to the adapter."
        )
    if site.kind == LOGITS:
        return adapter.lm_head(), "post"
    if site.kind == POSITIONS:
        rotary = getattr(adapter.language_model(), "rotary_emb", None)
        if rotary is None:
            raise ModelError(
                f"Expected the language model of {adapter.family} to have rotary_emb for the "
                "'positions' site. Got none."
            )
        return rotary, "pre"
    return adapter.vision_output(), "post"


def resolvable(adapter: VLMAdapter, name: str) -> bool:
    """Return whether the adapter's model has site ``name`` (e.g. 'positions' needs rotary_emb)."""
    try:
        resolve(adapter, parse_site(name, adapter.num_layers))
    except ModelError:
        return False
    return True


@dataclass(frozen=True)
class Write:
    """Replace (``mode='replace'``) or add to (``'add'``) a site's tensor at chosen positions.

    ``positions`` is a bool mask ``[batch, seq]`` (None: every position); ``value`` a tensor
    ``[batch, seq, d]`` (only masked positions are used) or a function of the site's tensor
    returning one.
    """

    site: str
    value: Any
    positions: Any = None
    mode: str = "replace"

    def __post_init__(self) -> None:
        if self.mode not in ("replace", "add"):
            raise UsageError(f"Expected write mode 'replace' or 'add'. Got {self.mode!r} instead.")

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return ``hidden`` [batch, seq, d] with this write applied (a new tensor)."""
        value = self.value(hidden) if callable(self.value) else self.value
        value = value.to(device=hidden.device, dtype=hidden.dtype)
        if value.shape != hidden.shape:
            raise ModelError(
                f"Expected a write to {self.site} of shape {tuple(hidden.shape)}. Got "
                f"{tuple(value.shape)} instead."
            )
        if self.positions is None:
            return hidden + value if self.mode == "add" else value
        import torch

        # torch.where, not a multiply by the mask: unmasked positions stay bit for bit.
        new = hidden + value if self.mode == "add" else value
        return torch.where(self._mask(hidden), new, hidden)

    def _mask(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return ``positions`` as a bool mask [batch, seq, 1] on ``hidden``'s device."""
        mask = self.positions.to(device=hidden.device).bool()
        if tuple(mask.shape) != tuple(hidden.shape[:-1]):
            raise ModelError(
                f"Expected write positions for {self.site} of shape {tuple(hidden.shape[:-1])} "
                f"(batch, seq). Got {tuple(mask.shape)} instead. During generate, pass "
                "prefill_only=True so that writes apply to the prompt only."
            )
        return mask.unsqueeze(-1)


@dataclass
class HookSession:
    """What :func:`hooks` yields: arm it before each forward when ``prefill_only``."""

    prefill_only: bool
    fired: set[str] = field(default_factory=set)
    armed: bool = True

    def arm(self) -> None:
        """Let every hook fire once more (the next forward's prefill)."""
        self.fired = set()
        self.armed = True

    def disarm(self) -> None:
        """Stop every hook until the next :meth:`arm` (decode steps, unrelated forwards)."""
        self.armed = False

    def missing(self, sites: Sequence[str]) -> list[str]:
        """Return the sites among ``sites`` whose module did not run since the last arm."""
        return sorted(set(sites) - self.fired)

    def _should_fire(self, key: str) -> bool:
        if not self.armed:
            return False
        if self.prefill_only and key in self.fired:
            return False
        self.fired.add(key)
        return True


def _first_tensor(output: Any) -> Any:
    return output[0] if isinstance(output, tuple | list) else output


def _replace_first(output: Any, tensor: Any) -> Any:
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    return tensor


def _logits_view(output: Any) -> Any:
    return getattr(output, "logits", output)


def _positions(pos: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
    """Return rotary position ids as [rope, batch, seq] (a plain LLaMA forward shares one row)."""
    pos = pos if pos.dim() == 3 else pos.unsqueeze(0)
    if hidden is not None and pos.shape[1] == 1 and hidden.shape[0] > 1:
        pos = pos.expand(pos.shape[0], hidden.shape[0], pos.shape[2])
    return pos


def _pre_hook(site: Site, session: HookSession, reads: list[ReadFn], writes: list[Write]) -> Any:
    key = site.name

    def hook(module: Any, args: Any, kwargs: Any) -> Any:
        if site.kind == POSITIONS:
            pos = args[1] if len(args) > 1 else kwargs.get("position_ids")
            if pos is not None and session._should_fire(key):
                hidden = args[0] if args else kwargs.get("x")
                for fn in reads:
                    fn(_positions(pos, hidden))
            return None
        in_args = bool(args)
        hidden = args[0] if in_args else kwargs.get("hidden_states")
        if hidden is None:
            raise ModelError(f"Expected {module.__class__.__name__} to receive hidden_states.")
        if not session._should_fire(key):
            return None
        for write in writes:
            hidden = write.apply(hidden)
        for fn in reads:
            fn(hidden)
        if not writes:
            return None
        if in_args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return hook


def _post_hook(site: Site, session: HookSession, reads: list[ReadFn], writes: list[Write]) -> Any:
    key = site.name

    def hook(module: Any, args: Any, output: Any) -> Any:
        if not session._should_fire(key):
            return None
        hidden = _logits_view(output) if site.kind == LOGITS else _first_tensor(output)
        for write in writes:
            hidden = write.apply(hidden)
        for fn in reads:
            fn(hidden)
        return _replace_first(output, hidden) if writes else None

    return hook


@contextlib.contextmanager
def hooks(
    adapter: VLMAdapter,
    reads: Mapping[str, ReadFn | Sequence[ReadFn]] | None = None,
    writes: Sequence[Write] = (),
    *,
    prefill_only: bool = False,
) -> Iterator[HookSession]:
    """Yield a HookSession with read and write hooks installed; remove them all on exit.

    ``reads`` maps a site name to a function (or functions) called with the site's tensor;
    ``writes`` change a site's tensor before its reads see it and before the model goes on.
    """
    per_site: dict[str, tuple[list[ReadFn], list[Write]]] = {}
    for name, fns in (reads or {}).items():
        fn_list = list(fns) if isinstance(fns, Sequence) else [fns]
        per_site.setdefault(name, ([], []))[0].extend(fn_list)
    for write in writes:
        per_site.setdefault(write.site, ([], []))[1].append(write)
    session = HookSession(prefill_only=prefill_only)
    handles = []
    try:
        for name, (site_reads, site_writes) in per_site.items():
            site = parse_site(name, adapter.num_layers)
            if site_writes and site.kind == POSITIONS:
                raise UsageError("Expected a write to a hidden-state site. Got one to 'positions'.")
            module, where = resolve(adapter, site)
            if where == "pre":
                hook = _pre_hook(site, session, site_reads, site_writes)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(
                    module.register_forward_hook(_post_hook(site, session, site_reads, site_writes))
                )
        yield session
    finally:
        for handle in handles:
            handle.remove()
        session.disarm()


__all__ = [
    "EMBED",
    "LOGITS",
    "POSITIONS",
    "VISION",
    "HookSession",
    "Site",
    "Write",
    "hooks",
    "parse_site",
    "residual_sites",
    "resolvable",
    "resolve",
    "site_name",
]
