"""The patching configuration: one frozen record, validated where it is built (Python or CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from priorscope.engine.conditions import parse_condition
from priorscope.engine.errors import UsageError, did_you_mean
from priorscope.engine.patch.replay import GROUPS, MODES, PositionGroup, as_group

METHODS = ("exact", "estimate", "both")


@dataclass(frozen=True)
class PatchConfig:
    """What :func:`priorscope.engine.patch.patch` computes.

    ``source``/``target``: the run whose states are spliced in and the run they go into
    (noising: source ``total``, target ``clean``); ``both_directions`` adds the reverse
    (denoising). ``layers`` is a layer/site filter (``all``, ``embed,resid.2``, ``0:8:2``);
    ``groups`` built-in names (image, text, last) or :class:`PositionGroup` index sets; ``modes``
    ``state`` and/or ``write``; ``examples`` the first N full-sequence examples (None: all).
    ``method``: ``exact`` (suffix replay, needs the model), ``estimate`` (gradients captured with
    ``--grad``, no model) or ``both`` (and their agreement). ``model`` overrides the model path
    recorded in the store (refused when its weights differ). The normalised effect is NaN where
    |margin(source) - margin(target)| < ``min_gap`` nats. ``keep`` names layers (``final``, ``all``
    or a list/range as ``layers``) at which every exact cell keeps the patched run's answer-
    position state (``kept`` in the results, for :func:`priorscope.engine.patch.readout`: what
    a replaced layer left decodable downstream); empty keeps none.
    """

    source: str = "total"
    target: str = "clean"
    both_directions: bool = True
    layers: str = "all"
    groups: tuple[str | PositionGroup, ...] = GROUPS
    modes: tuple[str, ...] = MODES
    examples: int | None = None
    method: str = "exact"
    model: str | None = None
    out: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 64
    examples_per_block: int = 16
    full_vocab: bool = True
    prior_condition: str = "total"
    min_gap: float = 0.1
    top_k: int = 20
    keep: str = ""

    def __post_init__(self) -> None:
        for name in (self.source, self.target, self.prior_condition):
            parse_condition(name)  # raises naming the accepted forms
        if self.source == self.target:
            raise UsageError(
                f"Expected different --source and --target conditions. Got {self.source!r} for "
                "both; patching a run with itself changes nothing."
            )
        if self.method not in METHODS:
            raise did_you_mean(self.method, METHODS, "patch method")
        if not self.modes:
            raise UsageError("Expected at least one --mode (state, write). Got none.")
        for mode in self.modes:
            if mode not in MODES:
                raise did_you_mean(mode, MODES, "patch mode")
        if not self.groups:
            raise UsageError("Expected at least one position group (image, text, last). Got none.")
        names = [as_group(g).name for g in self.groups]
        if len(set(names)) != len(names):
            raise UsageError(f"Expected distinct position group names. Got {names}.")
        if self.examples is not None and self.examples < 1:
            raise UsageError(f"Expected --examples N with N >= 1. Got {self.examples}.")
        for field, value in (("batch_size", self.batch_size), ("top_k", self.top_k)):
            if value < 1:
                raise UsageError(f"Expected {field} of at least 1. Got {value}.")
        if self.examples_per_block < 1:
            raise UsageError(f"Expected examples_per_block >= 1. Got {self.examples_per_block}.")
        if not self.min_gap >= 0:
            raise UsageError(f"Expected min_gap >= 0 nats. Got {self.min_gap}.")
        if not self.layers.strip():
            raise UsageError("Expected --layers as all, a list or a range. Got an empty string.")

    @property
    def position_groups(self) -> tuple[PositionGroup, ...]:
        return tuple(as_group(g) for g in self.groups)

    @property
    def directions(self) -> tuple[tuple[str, str], ...]:
        """Return (source, target) pairs: the asked one, then its reverse when both are asked."""
        pairs = [(self.source, self.target)]
        if self.both_directions:
            pairs.append((self.target, self.source))
        return tuple(pairs)

    def to_json(self) -> dict[str, Any]:
        """Return what changes the results (recorded in the results store; resume must match)."""
        return {
            "source": self.source,
            "target": self.target,
            "both_directions": self.both_directions,
            "layers": self.layers,
            "groups": [
                {"name": g.name, "indices": list(g.indices), "custom": g.select is not None}
                for g in self.position_groups
            ],
            "modes": list(self.modes),
            "examples": self.examples,
            "method": self.method,
            "full_vocab": self.full_vocab,
            "prior_condition": self.prior_condition,
            "min_gap": self.min_gap,
            "keep": self.keep,
        }


__all__ = ["METHODS", "PatchConfig"]
