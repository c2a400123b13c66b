"""Moved: the answers-only store writer lives in ``priorscope.engine.store`` now.

Kept so that older imports keep working; import ``write_answer_store`` from
``priorscope.engine.store`` instead.
"""

from __future__ import annotations

from priorscope.engine.store.answers import write_answer_store

__all__ = ["write_answer_store"]
