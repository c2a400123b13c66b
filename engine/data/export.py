"""Write a subset of a benchmark file's rows back out in the file's own format.

Used to export, e.g., the examples that really need the image. Rows are copied from the source
file named by each Example's :class:`SourceRef`, not re-serialised from the Example:

- VLMEvalKit TSV and LLaVA JSONL: the header and every chosen row are copied byte for byte,
  in file order. One exception: a TSV row whose ``image`` cell refers to another row's index
  that is not exported gets that row's base64 inline instead, so the subset stays loadable.
- Hugging Face parquet: the chosen rows are taken with pyarrow and written with the same schema
  (parquet pages cannot be spliced, so the file is row-identical, not byte-identical).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from priorscope.engine.data.example import Example
from priorscope.engine.data.formats import jsonl, parse_format, tsv
from priorscope.engine.errors import DataError, UsageError


def export_rows(examples: Sequence[Example], out: str | Path) -> Path:
    """Write the source rows of ``examples`` (all from one file) to ``out``; return its path."""
    sources = {(e.source.path, e.source.format) for e in examples if e.source is not None}
    unsourced = sum(e.source is None for e in examples)
    if unsourced or len(sources) != 1:
        raise UsageError(
            "Expected examples loaded from one benchmark file, each with a source. Got "
            f"{len(sources)} source files and {unsourced} examples without a source instead. "
            "Export each file's examples separately."
        )
    ((path, fmt),) = sources
    rows = sorted({e.source.row for e in examples if e.source is not None})
    target = Path(out)
    if Path(path).resolve() == target.resolve():
        raise UsageError(
            f"Expected an output path other than the source {path!r}. Got the same path instead."
        )
    export_source_rows(Path(path), fmt, rows, target)
    return target


def export_source_rows(path: Path, fmt: str, rows: Sequence[int], out: Path) -> int:
    """Return how many TSV rows got a referenced image inlined, after copying ``rows`` to ``out``.

    ``rows`` are 0-based data rows as the loaders number them (SourceRef.row); ``fmt`` is a
    format name or alias (see priorscope.engine.data.formats.parse_format).
    """
    fmt = parse_format(fmt)
    wanted = sorted(set(rows))
    if fmt == tsv.NAME:
        return _export_tsv(path, wanted, out)
    if fmt == jsonl.NAME:
        _export_lines(path, wanted, out)
    else:
        _export_parquet(path, wanted, out)
    return 0


def _raw_rows(text: str) -> Iterator[tuple[str, list[str]]]:
    """Yield (raw text, cells) for each record of a TSV text, header included."""
    lines = io.StringIO(text, newline="").readlines()
    consumed: list[str] = []

    def feed() -> Iterator[str]:
        for line in lines:
            consumed.append(line)
            yield line

    for cells in csv.reader(feed(), delimiter="\t"):
        raw = "".join(consumed)
        consumed.clear()
        yield raw, cells


def _export_tsv(path: Path, rows: list[int], out: Path) -> int:
    tsv._raise_field_limit()
    with path.open(encoding="utf-8", newline="") as handle:  # keep \r\n: rows are copied as is
        records = list(_raw_rows(handle.read()))
    (header_raw, header), data = records[0], [r for r in records[1:] if r[1]]
    names = [h.strip().lstrip("\ufeff") for h in header]
    wanted = set(rows)
    _check_rows(path, rows, len(data))
    image_col = names.index("image") if "image" in names else None
    id_col = names.index("index") if "index" in names else None
    exported_ids = {data[r][1][id_col].strip() for r in rows} if id_col is not None else set()
    inline: dict[str, str] = {}
    inlined = 0
    if image_col is not None and id_col is not None:
        for _, c in data:
            if len(c) > image_col and len(c[image_col].strip()) > tsv.REFERENCE_MAX_CHARS:
                inline.setdefault(c[id_col].strip(), c[image_col])
    with out.open("w", encoding="utf-8", newline="") as handle:
        handle.write(header_raw)
        for index, (raw, cells) in enumerate(data):
            if index not in wanted:
                continue
            ref = cells[image_col].strip() if image_col is not None else ""
            dangling = ref not in exported_ids and ref in inline
            if image_col is not None and len(ref) <= tsv.REFERENCE_MAX_CHARS and dangling:
                cells = list(cells)
                cells[image_col] = inline[ref]
                inlined += 1
                line_end = "\r\n" if raw.endswith("\r\n") else "\n"
                csv.writer(handle, delimiter="\t", lineterminator=line_end).writerow(cells)
            else:
                handle.write(raw if raw.endswith("\n") else raw + "\n")
    return inlined


def _check_rows(path: Path, rows: list[int], n_rows: int) -> None:
    bad = [r for r in rows if not 0 <= r < n_rows]
    if bad:
        raise DataError(
            f"Expected rows of {path.name} (0..{n_rows - 1}). Got row {bad[0]} instead; the "
            "file changed since the examples were loaded. Load it again."
        )


def _export_lines(path: Path, rows: list[int], out: Path) -> None:
    lines = path.read_bytes().split(b"\n")  # the same line numbering as the JSONL reader
    _check_rows(path, rows, len(lines))
    with out.open("wb") as handle:
        for row in rows:
            handle.write(lines[row] + b"\n")


def _export_parquet(path: Path, rows: list[int], out: Path) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    _check_rows(path, rows, table.num_rows)
    pq.write_table(table.take(rows), out)
