"""Counts that describe a loaded benchmark: what ``priorscope data check`` prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from priorscope.engine.data.example import Example
from priorscope.engine.data.loading import LoadResult
from priorscope.engine.data.problems import RowProblem


@dataclass(frozen=True)
class DataSummary:
    """Counts of examples by benchmark, category, template and answer kind, plus skipped rows."""

    path: str
    format: str
    n_rows: int
    n_examples: int
    by_benchmark: dict[str, int] = field(default_factory=dict)
    by_category: dict[str, int] = field(default_factory=dict)
    by_template: dict[str, int] = field(default_factory=dict)
    n_multiple_choice: int = 0
    n_open: int = 0
    n_unanswered: int = 0
    n_counter_prior: int = 0
    n_text_only: int = 0
    n_multi_image: int = 0
    n_derived_ids: int = 0
    notes: tuple[str, ...] = ()
    skipped: tuple[RowProblem, ...] = ()
    report_path: str | None = None

    @property
    def ok(self) -> bool:
        """Return True when no row was skipped and at least one example was read."""
        return not self.skipped and self.n_examples > 0


def _counts(values: Iterable[str]) -> dict[str, int]:
    counter = Counter(values)
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def summarize(result: LoadResult) -> DataSummary:
    """Return the DataSummary of a LoadResult (templates come from the synth's metadata)."""
    examples: list[Example] = result.examples
    return DataSummary(
        path=str(result.path),
        format=result.format,
        n_rows=result.n_rows,
        n_examples=len(examples),
        by_benchmark=_counts(e.benchmark for e in examples),
        by_category=_counts(e.category or "(none)" for e in examples),
        by_template=_counts(e.metadata["template"] for e in examples if "template" in e.metadata),
        n_multiple_choice=sum(e.is_multiple_choice for e in examples),
        n_open=sum(not e.is_multiple_choice for e in examples),
        n_unanswered=sum(not e.answers for e in examples),
        n_counter_prior=sum(e.metadata.get("counter_prior") == "1" for e in examples),
        n_text_only=sum(not e.has_image for e in examples),
        n_multi_image=sum(len(e.images) > 1 for e in examples),
        n_derived_ids=result.n_derived_ids,
        notes=result.notes,
        skipped=result.skipped,
        report_path=str(result.report_path) if result.report_path else None,
    )
