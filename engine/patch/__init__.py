"""Counterfactual layer replacement from the cache: logit lens, exact suffix replay, estimates;
``readout(store, result)`` reads an example column from patched final states (where a layer's
replacement leaves a suppressed signal decodable).

``logit_lens(store)`` needs no model; ``patch(store, PatchConfig(...))`` replays decoder suffixes
from cached residuals (the vision tower and layers 0..L never re-run) and/or estimates effects
to first order from gradients captured with ``--grad``.
"""

from __future__ import annotations

from priorscope.engine.patch.config import PatchConfig
from priorscope.engine.patch.lens import LensResult, logit_lens
from priorscope.engine.patch.read import read_lens, read_patch
from priorscope.engine.patch.readout import Readout, localise_config, readout
from priorscope.engine.patch.replay import PositionGroup
from priorscope.engine.patch.run import PatchResult, lens, patch

__all__ = [
    "LensResult",
    "PatchConfig",
    "PatchResult",
    "PositionGroup",
    "Readout",
    "lens",
    "localise_config",
    "logit_lens",
    "patch",
    "read_lens",
    "read_patch",
    "readout",
]
