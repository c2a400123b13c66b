"""Analyses that read a capture store: decay metrics and the grounded-subset export.

Analyses read only the store (``priorscope.engine.store.schema`` names); they never import the
capture engine, so a store written on one machine can be analysed on another.
"""

from __future__ import annotations

from priorscope.engine.analysis.decay import DecayConfig, DecayResult, compute_decay
from priorscope.engine.analysis.export import GroundedConfig, export_grounded
from priorscope.engine.analysis.read import StoreTables, open_store, read_outputs, read_tables

__all__ = [
    "DecayConfig",
    "DecayResult",
    "GroundedConfig",
    "StoreTables",
    "compute_decay",
    "export_grounded",
    "open_store",
    "read_outputs",
    "read_tables",
]
