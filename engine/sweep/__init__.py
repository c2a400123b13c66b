"""Sweeps: every model on every benchmark, one store each, resumable, and the paper's table."""

from __future__ import annotations

from priorscope.engine.sweep.config import (
    AnalysisOptions,
    BenchmarkSpec,
    CaptureOptions,
    Job,
    ModelSpec,
    SweepConfig,
    load_sweep,
)
from priorscope.engine.sweep.run import JobOutcome, SweepResult, run_sweep, store_state
from priorscope.engine.sweep.status import JobStatus, status_json, sweep_status
from priorscope.engine.sweep.table import TableFiles, write_table

__all__ = [
    "AnalysisOptions",
    "BenchmarkSpec",
    "CaptureOptions",
    "Job",
    "JobOutcome",
    "JobStatus",
    "ModelSpec",
    "SweepConfig",
    "SweepResult",
    "TableFiles",
    "load_sweep",
    "run_sweep",
    "status_json",
    "store_state",
    "sweep_status",
    "write_table",
]
