"""Read patching and logit-lens results stores back into the objects that wrote them.

The report draws from results stores found beside a capture store, so it needs the results
without the model or the capture store's hidden states: ``read_patch(path)`` returns the
:class:`~.run.PatchResult` (exact and estimate arrays, agreement, top cells) and
``read_lens(path)`` the :class:`~.lens.LensResult`, each equal to what was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.patch.config import PatchConfig
from priorscope.engine.patch.estimate import Agreement
from priorscope.engine.patch.lens import LensResult
from priorscope.engine.patch.replay import GROUPS
from priorscope.engine.patch.run import PatchResult
from priorscope.engine.patch.schema import LENS_GROUP, PATCH_GROUP
from priorscope.engine.patch.targets import Targets
from priorscope.engine.store import open_results

EXACT_ARRAYS = (
    "margin_target",
    "margin_source",
    "margin",
    "delta",
    "effect",
    "top",
    "flipped",
    "logprob",
    "kept",
    "replay_check",
)
ESTIMATE_ARRAYS = ("est_delta", "est_effect")


def _config(recorded: dict[str, Any]) -> PatchConfig:
    """Return the PatchConfig a results store recorded (custom position groups by name only)."""
    groups = [g["name"] for g in recorded.get("groups", [])]
    return PatchConfig(
        source=recorded["source"],
        target=recorded["target"],
        both_directions=bool(recorded["both_directions"]),
        layers=str(recorded["layers"]),
        # A custom index set is not recoverable from its name; the result's ``groups`` keeps it.
        groups=tuple(g for g in groups if g in GROUPS) or GROUPS,
        modes=tuple(recorded["modes"]),
        examples=recorded.get("examples"),
        method=recorded["method"],
        full_vocab=bool(recorded.get("full_vocab", True)),
        prior_condition=recorded.get("prior_condition", "total"),
        min_gap=float(recorded.get("min_gap", 0.1)),
        keep=str(recorded.get("keep", "")),
    )


def read_patch(path: str | Path) -> PatchResult:
    """Return the patching result written at ``path`` (see :func:`~.run.write_patch`)."""
    rs = open_results(path, PATCH_GROUP, mode="r")
    attrs = rs.attrs
    coords = attrs.get("coords", {})
    config = _config(attrs["config"])
    exact = {n: rs.read(n) for n in EXACT_ARRAYS if rs.has(n)}
    estimate = {n: rs.read(n) for n in ESTIMATE_ARRAYS if rs.has(n)}
    directions = tuple(tuple(d.split("->", 1)) for d in coords.get("direction", []))
    return PatchResult(
        config=config,
        directions=directions or config.directions,
        groups=tuple(coords.get("group", [])),
        modes=tuple(coords.get("mode", [])),
        candidates=tuple(coords.get("candidate", [])),
        conditions=tuple(coords.get("source_condition", [])),
        rows=rs.read("example") if exact else np.zeros(0, np.int64),
        layers=tuple(int(v) for v in coords.get("layer", [])),
        kept_layers=tuple(int(v) for v in coords.get("kept_layer", [])),
        gold=rs.read("gold"),
        prior=rs.read("prior"),
        exact=exact,
        est_rows=rs.read("est_example") if rs.has("est_example") else np.zeros(0, np.int64),
        est_layers=tuple(int(v) for v in coords.get("est_layer", [])),
        estimate=estimate,
        agreement={k: Agreement(**v) for k, v in attrs.get("agreement", {}).items()},
        top_cells=list(attrs.get("top_cells", [])),
        path=str(path),
    )


def read_lens(path: str | Path) -> LensResult:
    """Return the logit-lens result written at ``path`` (see :func:`~.run.write_lens`)."""
    rs = open_results(path, LENS_GROUP, mode="r")
    attrs = rs.attrs
    coords = attrs.get("coords", {})
    check = attrs.get("check_error")
    return LensResult(
        rows=rs.read("example"),
        conditions=tuple(coords.get("condition", [])),
        layers=tuple(int(v) for v in coords.get("layer", [])),
        candidates=tuple(attrs.get("candidates", [])),
        targets=Targets(gold=rs.read("gold"), prior=rs.read("prior")),
        gold_logprob=rs.read("gold_logprob"),
        prior_logprob=rs.read("prior_logprob"),
        margin=rs.read("margin"),
        top=rs.read("top"),
        top_logprob=rs.read("top_logprob"),
        final=rs.read("final"),
        first_lead=rs.read("first_lead"),
        settled=rs.read("settled"),
        check_error=float("nan") if check is None else float(check),
    )


__all__ = ["read_lens", "read_patch"]
