"""Layer-wise probes over a store: where is the visual answer decodable, and where does it fade?

``fit_probes(store, ProbeConfig(...))`` trains thousands of linear and MLP probes, one cell per
(target, kind, train condition, test condition, layer, site reduction), as a dask graph of one
task per (layer, training condition), and writes them to a resumable results store read back
as a :class:`ProbeResult`.
"""

from __future__ import annotations

from priorscope.engine.probes.config import KINDS, ProbeConfig, parse_kinds
from priorscope.engine.probes.results import PROBES_GROUP, ProbeResult
from priorscope.engine.probes.run import fit_probes

__all__ = ["KINDS", "PROBES_GROUP", "ProbeConfig", "ProbeResult", "fit_probes", "parse_kinds"]
