"""Analyses that read a store: decay metrics and the grounded-subset export.

Analyses read a store only through ``priorscope.engine.store.open_store`` (they accept a Store or
a path); they never import the capture engine, so a store written on one machine can be
analysed on another.
"""

from __future__ import annotations

from priorscope.engine.analysis.decay import DecayConfig, compute_decay
from priorscope.engine.analysis.decay_result import DecayResult, Estimate, GroupResult
from priorscope.engine.analysis.export import ExportResult, GroundedConfig, export_grounded

__all__ = [
    "DecayConfig",
    "DecayResult",
    "Estimate",
    "ExportResult",
    "GroundedConfig",
    "GroupResult",
    "compute_decay",
    "export_grounded",
]
