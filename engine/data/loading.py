"""Load a benchmark file into Examples: format detection, bad-row policy, duplicate ids, reports.

``load`` reads the whole file and returns a :class:`LoadResult` whose ``examples`` is a list (a
list rather than an iterator because VLMEvalKit rows may reuse the image of any other row, and
duplicate ids can only be ruled out after the last row). With ``on_bad="error"`` (the default)
the first bad row raises a :class:`~priorscope.engine.data.problems.BadRowError` naming file,
row, column and what was expected; with ``on_bad="skip"`` bad rows are skipped, each recorded in
``LoadResult.skipped`` and written to a sidecar report (``<file>.skipped.tsv`` by default).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from priorscope.engine.data.example import Example
from priorscope.engine.data.formats import (
    FORMATS,
    ReadOptions,
    detect_format,
    parse_columns,
    parse_format,
)
from priorscope.engine.data.problems import BadRowError, RowProblem
from priorscope.engine.errors import DataError, UsageError

ON_BAD = ("error", "skip")


@dataclass(frozen=True)
class LoadResult:
    """The examples of one file, the rows skipped on the way, and where they were reported."""

    path: Path
    format: str
    examples: list[Example]
    skipped: tuple[RowProblem, ...] = ()
    report_path: Path | None = None

    @property
    def n_rows(self) -> int:
        """Return the number of data rows read: examples plus skipped rows."""
        return len(self.examples) + len(self.skipped)


def parse_on_bad(value: str) -> str:
    """Return ``value`` if it is a bad-row policy ('error' or 'skip'); raise UsageError if not."""
    if value not in ON_BAD:
        raise UsageError(
            f"Expected --on-bad to be one of: {', '.join(ON_BAD)}. Got {value!r} instead."
        )
    return value


def parse_limit(value: int | None) -> int | None:
    """Return ``value`` if it is None or a positive row count; raise UsageError if not."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"Expected --limit to be a positive integer. Got {value!r} instead.")
    return value


def load(
    path: str | Path,
    *,
    format: str | None = None,
    columns: Mapping[str, str] | Sequence[str] | None = None,
    image_root: str | Path | None = None,
    on_bad: str = "error",
    benchmark: str | None = None,
    limit: int | None = None,
    max_pixels: int | None = None,
    decode_images: bool = False,
    report_path: str | Path | None = None,
) -> LoadResult:
    """Return the examples of benchmark file ``path`` (see the module docstring).

    ``format`` names the format (``vlmevalkit-tsv``/``tsv``, ``hf-parquet``/``parquet``,
    ``llava-jsonl``/``jsonl``; detected from the extension and content when None). ``columns``
    maps fields to file columns, as a dict or ``"field=column"`` strings. ``image_root`` is the
    folder image paths are relative to (default: the file's folder). ``benchmark`` names rows
    without a ``benchmark`` column (default: the file stem). ``limit`` stops after that many
    examples. ``max_pixels`` bounds image size; ``decode_images`` decodes every image fully
    instead of reading only its header.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(
            f"Expected a benchmark file at {str(source)!r}. Got no such file instead. Check the path."
        )
    opts = ReadOptions(
        path=source,
        format=parse_format(format) if format else detect_format(source),
        columns=parse_columns(columns),
        image_root=Path(image_root) if image_root is not None else None,
        benchmark=benchmark,
        max_pixels=max_pixels,
        decode_images=decode_images,
    )
    if opts.image_root is not None and not opts.image_root.is_dir():
        raise UsageError(
            f"Expected --image-root to be a folder. Got {str(opts.image_root)!r}, which is not "
            "one, instead."
        )
    policy, cap = parse_on_bad(on_bad), parse_limit(limit)
    examples: list[Example] = []
    skipped: list[RowProblem] = []
    first_row: dict[str, int] = {}
    for item in FORMATS[opts.format](opts):
        if isinstance(item, RowProblem):
            if policy == "error":
                raise BadRowError(item)
            skipped.append(item)
            continue
        _check_unique(item, first_row, opts)
        examples.append(item)
        if cap is not None and len(examples) >= cap:
            break
    report = None
    if skipped:
        report = write_skip_report(skipped, _report_path(source, report_path))
    return LoadResult(source, opts.format, examples, tuple(skipped), report)


def _check_unique(example: Example, first_row: dict[str, int], opts: ReadOptions) -> None:
    row = example.source.row if example.source else -1
    if example.id in first_row:
        raise DataError(
            f"{opts.path.name}, row {row}: Expected unique ids. Got id {example.id!r} again "
            f"(first seen in row {first_row[example.id]}) instead. Give every row its own id; "
            "later stages key their results on it."
        )
    first_row[example.id] = row


def _report_path(source: Path, requested: str | Path | None) -> Path:
    return (
        Path(requested) if requested is not None else source.with_name(source.name + ".skipped.tsv")
    )


def write_skip_report(skipped: Sequence[RowProblem], path: Path) -> Path:
    """Write one line per skipped row (file, row, line, column, reason) as TSV; return the path."""
    try:
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["file", "row", "line", "column", "reason"])
            for p in skipped:
                writer.writerow([p.path, p.row, p.line or "", p.column, " ".join(p.reason.split())])
    except OSError as exc:
        raise DataError(
            f"Expected to write the skipped-rows report to {str(path)!r}. Got {exc} instead. "
            "Pass a writable report path."
        ) from exc
    return path
