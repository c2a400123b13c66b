"""The data layer: benchmark files in, :class:`Example` records out.

``load(path)`` reads a VLMEvalKit TSV, a Hugging Face parquet file or a LLaVA-style JSONL file
(see :mod:`priorscope.engine.data.loading`) and applies the file-level conventions of real
benchmark files (:mod:`priorscope.engine.data.conventions`; what loads and how it is scored, per
benchmark: engine/data/COMPATIBILITY.md); :mod:`priorscope.engine.data.synth` generates the
synthetic benchmark with planted priors; :mod:`priorscope.engine.data.scoring` scores answers;
:func:`export_rows` writes a subset of a file's rows back out in its own format.
"""

from __future__ import annotations

from priorscope.engine.data.example import METRICS, OPTION_LABELS, Example, SourceRef
from priorscope.engine.data.export import export_rows
from priorscope.engine.data.formats.base import Conventions
from priorscope.engine.data.loading import LoadResult, load
from priorscope.engine.data.problems import BadRowError, RowProblem

__all__ = [
    "METRICS",
    "OPTION_LABELS",
    "BadRowError",
    "Conventions",
    "Example",
    "LoadResult",
    "RowProblem",
    "SourceRef",
    "export_rows",
    "load",
]
