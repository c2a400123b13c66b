"""Load a benchmark file into Examples: format detection, bad-row policy, duplicate ids, reports.

``load`` reads the whole file and returns a :class:`LoadResult` whose ``examples`` is a list (a
list rather than an iterator because VLMEvalKit rows may reuse the image of any other row, and
conventions such as answer indices and repeated ids are decided per file, after the last row;
see :mod:`priorscope.engine.data.conventions`). With ``on_bad="error"`` (the default) the first
bad row raises a :class:`~priorscope.engine.data.problems.BadRowError` naming file, row, column
and what was expected; with ``on_bad="skip"`` bad rows are skipped, each recorded in
``LoadResult.skipped`` and written to a sidecar report (``<file>.skipped.tsv`` by default).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from priorscope.engine.data.conventions import finish
from priorscope.engine.data.example import Example
from priorscope.engine.data.formats import (
    FORMATS,
    ReadOptions,
    detect_format,
    parse_columns,
    parse_format,
)
from priorscope.engine.data.formats.base import Conventions
from priorscope.engine.data.problems import BadRowError, RowProblem
from priorscope.engine.errors import DataError, UsageError

ON_BAD = ("error", "skip")


@dataclass(frozen=True)
class LoadResult:
    """The examples of one file, the rows skipped on the way, and where they were reported.

    ``notes`` describe each file-level convention applied (derived ids, answer indices, 1/0
    yes/no answers, text-only rows, the metric); ``n_derived_ids`` counts rows given a derived id.
    """

    path: Path
    format: str
    examples: list[Example]
    skipped: tuple[RowProblem, ...] = ()
    report_path: Path | None = None
    notes: tuple[str, ...] = ()
    n_derived_ids: int = 0

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
    answer_is_index: bool | None = None,
    yes_no_01: bool | None = None,
    duplicate_ids: str = "auto",
    missing_image: str = "auto",
    metric: str = "auto",
) -> LoadResult:
    """Return the examples of benchmark file ``path`` (see the module docstring).

    ``format`` names the format (``vlmevalkit-tsv``/``tsv``, ``hf-parquet``/``parquet``,
    ``llava-jsonl``/``jsonl``; detected from the extension and content when None). ``columns``
    maps fields to file columns, as a dict or ``"field=column"`` strings. ``image_root`` is the
    folder image paths are relative to (default: the file's folder). ``benchmark`` names rows
    without a ``benchmark`` column (default: the file stem). ``limit`` keeps the first that many
    examples (the conventions are still decided on the whole file). ``max_pixels`` bounds image
    size; ``decode_images`` decodes every image fully instead of reading only its header.
    ``answer_is_index``, ``yes_no_01``, ``duplicate_ids``, ``missing_image`` and ``metric`` fix
    the file-level conventions (:class:`~priorscope.engine.data.formats.base.Conventions`).
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(
            f"Expected a benchmark file at {str(source)!r}. Got no such file instead. Check the path."
        )
    conventions = Conventions(answer_is_index, yes_no_01, duplicate_ids, missing_image, metric)
    opts = ReadOptions(
        path=source,
        format=parse_format(format) if format else detect_format(source),
        columns=parse_columns(columns),
        image_root=Path(image_root) if image_root is not None else None,
        benchmark=benchmark,
        max_pixels=max_pixels,
        decode_images=decode_images,
        conventions=conventions,
    )
    if opts.image_root is not None and not opts.image_root.is_dir():
        raise UsageError(
            f"Expected --image-root to be a folder. Got {str(opts.image_root)!r}, which is not "
            "one, instead."
        )
    policy, cap = parse_on_bad(on_bad), parse_limit(limit)
    done = finish(list(FORMATS[opts.format](opts)), opts)
    examples, skipped = _partition(done.items, policy, cap)
    report = None
    if skipped:
        report = write_skip_report(skipped, _report_path(source, report_path))
    return LoadResult(
        source, opts.format, examples, tuple(skipped), report, tuple(done.notes), done.n_derived_ids
    )


def _partition(
    items: Sequence[Example | RowProblem], policy: str, cap: int | None
) -> tuple[list[Example], list[RowProblem]]:
    """Return (examples up to ``cap``, skipped rows); raise on the first bad row under 'error'."""
    examples: list[Example] = []
    skipped: list[RowProblem] = []
    for item in items:
        if isinstance(item, RowProblem):
            if policy == "error":
                raise BadRowError(item)
            skipped.append(item)
        elif cap is None or len(examples) < cap:
            examples.append(item)
    return examples, skipped


def add_skipped(
    result: LoadResult, problems: Sequence[RowProblem], report_path: str | Path | None = None
) -> LoadResult:
    """Return ``result`` with ``problems`` added to its skipped rows, the report rewritten.

    For rows a later stage cannot use (capture: more images than the model family takes);
    they are counted and reported like the rows the loader skipped itself.
    """
    if not problems:
        return result
    skipped = (*result.skipped, *problems)
    path = result.report_path or _report_path(result.path, report_path)
    return replace(result, skipped=skipped, report_path=write_skip_report(skipped, path))


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
