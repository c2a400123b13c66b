"""Bad rows: what went wrong where, as a record (for skip reports) and as an error (to stop)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from priorscope.engine.errors import DataError


@dataclass(frozen=True)
class RowProblem:
    """Why row ``row`` (0-based data row) of ``path`` cannot become an Example.

    ``line`` is the 1-based line of the file where the row starts (0 when the format has no
    lines, e.g. parquet); ``column`` is the offending column or field ("" when the whole row is).
    ``reason`` reads "Expected X. Got Y instead." plus what to do.
    """

    path: str
    row: int
    column: str
    reason: str
    line: int = 0

    def where(self) -> str:
        """Return 'file.tsv, row 3 (line 5), column 'answer'' style location text."""
        text = f"{Path(self.path).name}, row {self.row}"
        if self.line:
            text += f" (line {self.line})"
        if self.column:
            text += f", column {self.column!r}"
        return text

    def message(self) -> str:
        """Return the one-paragraph error message for this problem."""
        return f"{self.where()}: {self.reason}"


class BadRowError(DataError):
    """A row cannot be turned into an Example; ``problem`` says where and why."""

    def __init__(self, problem: RowProblem) -> None:
        super().__init__(
            problem.message() + " Pass --on-bad skip to skip such rows and get a report of them."
        )
        self.problem = problem


class RowFault(Exception):
    """Raised inside a format reader for one bad field; the reader turns it into a RowProblem."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason
