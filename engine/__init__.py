"""priorscope.engine: what a researcher types, importable from one place.

    from priorscope.engine import CaptureConfig, capture, compute_decay, open_store

Names resolve lazily (PEP 562), so ``import priorscope.engine`` stays cheap: torch and the
model code load only when ``capture`` or ``load_model`` is first used.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from priorscope.engine.analysis import (
        DecayConfig,
        DecayResult,
        GroundedConfig,
        compute_decay,
        export_grounded,
    )
    from priorscope.engine.capture import CaptureConfig, capture
    from priorscope.engine.demo import DemoConfig, run_demo
    from priorscope.engine.models import load_model
    from priorscope.engine.report import ReportConfig, write_report
    from priorscope.engine.store import Store, open_store, verify, write_answer_store

_EXPORTS = {
    "open_store": "priorscope.engine.store",
    "Store": "priorscope.engine.store",
    "verify": "priorscope.engine.store",
    "write_answer_store": "priorscope.engine.store",
    "CaptureConfig": "priorscope.engine.capture",
    "compute_decay": "priorscope.engine.analysis",
    "DecayConfig": "priorscope.engine.analysis",
    "DecayResult": "priorscope.engine.analysis",
    "export_grounded": "priorscope.engine.analysis",
    "GroundedConfig": "priorscope.engine.analysis",
    "write_report": "priorscope.engine.report",
    "ReportConfig": "priorscope.engine.report",
    "run_demo": "priorscope.engine.demo",
    "DemoConfig": "priorscope.engine.demo",
    "load_model": "priorscope.engine.models",
}

__all__ = [
    "CaptureConfig",
    "DecayConfig",
    "DecayResult",
    "DemoConfig",
    "GroundedConfig",
    "ReportConfig",
    "Store",
    "capture",
    "compute_decay",
    "export_grounded",
    "load_model",
    "open_store",
    "run_demo",
    "verify",
    "write_answer_store",
    "write_report",
]


class _Engine(types.ModuleType):
    """This package, with ``capture`` always the function rather than the subpackage.

    Importing the subpackage ``priorscope.engine.capture`` makes the import system set the
    package attribute ``capture`` to that module, which would turn ``from priorscope.engine
    import capture`` into a module depending on import order. A property on the module's class
    takes precedence over that attribute; its setter leaves the subpackage in sys.modules only.
    """

    @property
    def capture(self) -> Any:
        from priorscope.engine.capture.run import capture

        return capture

    @capture.setter
    def capture(self, value: Any) -> None:
        if not isinstance(value, types.ModuleType):
            raise AttributeError("priorscope.engine.capture is the capture function")


sys.modules[__name__].__class__ = _Engine


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'priorscope.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "capture"})
