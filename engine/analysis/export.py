"""Export the grounded subset: items that need the image, in the benchmark's own file format.

An item is grounded when the model is correct on the clean image and wrong both under the severe
blur and under total obfuscation (each requirement and threshold configurable). The subset is
written so that the tools a user already has can evaluate on it:

* VLMEvalKit TSV: the header and the selected data rows copied byte for byte. A row whose
  ``image`` cell refers to another row's image (a value of at most 64 characters naming that
  row's ``index``) gets the referenced image inlined when that row is not exported too, because
  the reference would dangle otherwise; these rows are counted in the result.
* Parquet: the selected rows taken from the input table (schema and metadata kept).
* JSONL: the selected lines copied byte for byte; a JSON array: the selected elements.

Rows are found through ``examples/source_row`` (0-based data row) and the dataset file recorded
in the store's ``dataset`` attribute, whose sha256 is checked so that a changed file is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from priorscope.engine.analysis.decay import resolve_levels
from priorscope.engine.analysis.read import StoreTables, open_store, read_array, read_tables
from priorscope.engine.errors import StoreError, UsageError
from priorscope.engine.store import schema

VLMEVALKIT_REF_MAX = 64  # VLMEvalKit treats an image cell this short as another row's index


@dataclass(frozen=True)
class GroundedConfig:
    """Which items count as grounded: correct on clean, wrong when the image is destroyed."""

    clean_at: float = 0.5  # correct on clean when score >= clean_at
    wrong_below: float = 0.5  # wrong under obfuscation when score < wrong_below
    severe: str | None = None  # the blur level used as "severe"; None = the most severe one
    require_severe: bool = True
    require_total: bool = True
    dataset: Path | None = None  # the input file, when it moved since capture


def parse_grounded_config(
    *,
    clean_at: float = 0.5,
    wrong_below: float = 0.5,
    severe: str | None = None,
    require_severe: bool = True,
    require_total: bool = True,
    dataset: str | Path | None = None,
) -> GroundedConfig:
    """Return a validated GroundedConfig; raise UsageError naming the bad argument."""
    for name, value in (("--clean-at", clean_at), ("--wrong-below", wrong_below)):
        if not 0.0 < value <= 1.0:
            raise UsageError(f"Expected {name} in (0, 1]. Got {value} instead.")
    if not (require_severe or require_total):
        raise UsageError(
            "Expected at least one of severe and total obfuscation to be required. Got neither. "
            "Drop --no-severe or --no-total."
        )
    return GroundedConfig(
        clean_at,
        wrong_below,
        severe,
        require_severe,
        require_total,
        None if dataset is None else Path(dataset),
    )


@dataclass(frozen=True)
class ExportResult:
    """What export_grounded wrote: the file, how many rows of how many, and rewritten rows."""

    out: Path
    format: str
    selected_ids: tuple[str, ...]
    n_examples: int
    inlined_images: int


def grounded_mask(score: np.ndarray, tables: StoreTables, config: GroundedConfig) -> np.ndarray:
    """Return which committed examples are grounded. score [n, C] -> [n] bool."""
    levels = resolve_levels(tables.conditions, config.severe)
    keep = score[:, levels.clean] >= config.clean_at
    needed = []
    if config.require_severe:
        needed.append(("severe", levels.severe))
    if config.require_total:
        needed.append(("total", levels.total))
    for what, col in needed:
        if col is None:
            raise StoreError(
                f"Expected a {what} condition in the store to select grounded items. Got "
                f"conditions {list(levels.names)}. Capture it, or pass --no-{what}."
            )
        keep &= score[:, col] < config.wrong_below
    return keep


def export_grounded(
    store: str | Path, out: str | Path, config: GroundedConfig | None = None
) -> ExportResult:
    """Return what was written after exporting the grounded items of ``store`` to ``out``."""
    config = config or GroundedConfig()
    tables = read_tables(store)
    group = open_store(store)
    score = read_array(group, schema.OUT_SCORE, tables.rows).astype(np.float32)
    mask = grounded_mask(score, tables, config)
    source, fmt = _dataset_file(tables, config)
    rows = tables.source_row[mask]
    if (rows < 0).any():
        raise StoreError(
            "Expected examples/source_row >= 0 for every exported example. Got -1 (row unknown). "
            "Export needs a store captured from a benchmark file."
        )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writers = {
        "tsv": _export_tsv,
        "parquet": _export_parquet,
        "jsonl": _export_jsonl,
        "json": _export_json,
    }
    inlined = writers[fmt](source, sorted(int(r) for r in rows), out_path)
    ids = tuple(tables.ids[i] for i in np.flatnonzero(mask))
    return ExportResult(out_path, fmt, ids, tables.n, inlined)


def _dataset_file(tables: StoreTables, config: GroundedConfig) -> tuple[Path, str]:
    """Return (input file, format key) of the store's dataset, its sha256 checked."""
    info = tables.attrs.get("dataset") or {}
    files = list(info.get("files") or [])
    if config.dataset is None and len(files) != 1:
        raise StoreError(
            f"Expected the store to record exactly one dataset file. Got {files!r}. "
            "Pass --dataset FILE to name the input file the rows come from."
        )
    path = config.dataset or Path(files[0])
    if not path.is_file():
        raise StoreError(
            f"Expected the dataset file {str(path)!r} recorded by the capture. Got no such "
            "file. Pass --dataset FILE if it moved."
        )
    recorded = info.get("sha256")
    recorded = recorded[0] if isinstance(recorded, list) and recorded else recorded
    if recorded:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != recorded:
            raise StoreError(
                f"Expected {str(path)!r} to have sha256 {recorded[:12]}… as at capture. Got "
                f"{digest[:12]}… instead: the file changed, so its rows may not match the "
                "store. Export from the file that was captured."
            )
    return path, _format_key(path, str(info.get("format") or ""))


def _format_key(path: Path, recorded: str) -> str:
    """Return tsv | parquet | jsonl | json from the file's suffix or the recorded format."""
    by_suffix = {".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "json"}
    if path.suffix.lower() in by_suffix:
        return by_suffix[path.suffix.lower()]
    lowered = recorded.lower()
    for key, fmt in (
        ("tsv", "tsv"),
        ("vlmevalkit", "tsv"),
        ("parquet", "parquet"),
        ("jsonl", "jsonl"),
        ("llava", "jsonl"),
    ):
        if key in lowered:
            return fmt
    raise StoreError(
        f"Expected a dataset file ending in .tsv, .parquet, .jsonl or .json. Got {path.name!r} "
        f"(recorded format {recorded!r}). Export supports those formats only."
    )


def split_records(data: bytes) -> list[bytes]:
    """Return the records of a delimited text file, each with its line terminator.

    A newline inside double quotes belongs to the field (csv QUOTE_MINIMAL, what pandas writes);
    empty lines are dropped, as readers of these files skip them.
    """
    records, start, in_quotes = [], 0, False
    # Only quotes and newlines matter; scanning for them keeps a 100 MB file fast.
    for match in re.finditer(rb'["\n]', data):
        if match.group() == b'"':  # a doubled quote toggles twice, so escapes need no care
            in_quotes = not in_quotes
        elif not in_quotes:
            records.append(data[start : match.end()])
            start = match.end()
    if start < len(data):
        records.append(data[start:])
    return [r for r in records if r.strip(b"\r\n")]


def _fields(record: bytes) -> list[str]:
    """Return the tab-separated fields of one record."""
    return next(csv.reader(io.StringIO(record.decode("utf-8")), delimiter="\t"))


def _export_tsv(source: Path, rows: Sequence[int], out: Path) -> int:
    """Write the header and data ``rows`` of a TSV; return how many rows had images inlined."""
    records = split_records(source.read_bytes())
    header, data = records[0], records[1:]
    bad = [r for r in rows if r >= len(data)]
    if bad:
        raise StoreError(
            f"Expected source rows below {len(data)} (the data rows of {source.name}). Got "
            f"{bad[:5]}. The store and the file disagree; export from the captured file."
        )
    names = _fields(header)
    terminator = b"\r\n" if header.endswith(b"\r\n") else b"\n"
    chosen = set(rows)
    inlined = 0
    parts = [header]
    image_col = names.index("image") if "image" in names else None
    index_col = names.index("index") if "index" in names else None
    by_index: dict[str, int] | None = None
    for r in rows:
        record = data[r] if data[r].endswith(b"\n") else data[r] + terminator
        if image_col is not None and index_col is not None:
            cells = _fields(record)
            ref = cells[image_col] if image_col < len(cells) else ""
            if 0 < len(ref) <= VLMEVALKIT_REF_MAX:
                by_index = by_index or {_fields(d)[index_col]: i for i, d in enumerate(data)}
                target = by_index.get(ref)
                if target is not None and target not in chosen:
                    cells[image_col] = _fields(data[target])[image_col]
                    record = _join(cells, terminator)
                    inlined += 1
        parts.append(record)
    out.write_bytes(b"".join(parts))
    return inlined


def _join(cells: list[str], terminator: bytes) -> bytes:
    """Return one TSV record with minimal quoting, as pandas writes it."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter="\t", lineterminator=terminator.decode()).writerow(cells)
    return buffer.getvalue().encode("utf-8")


def _export_parquet(source: Path, rows: Sequence[int], out: Path) -> int:
    """Write the selected rows of a parquet table; nothing is ever inlined."""
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    pq.write_table(table.take(list(rows)), out)
    return 0


def _export_jsonl(source: Path, rows: Sequence[int], out: Path) -> int:
    """Write the selected non-empty lines of a JSONL file byte for byte."""
    lines = [ln for ln in source.read_bytes().splitlines(keepends=True) if ln.strip()]
    out.write_bytes(
        b"".join(ln if ln.endswith(b"\n") else ln + b"\n" for ln in (lines[r] for r in rows))
    )
    return 0


def _export_json(source: Path, rows: Sequence[int], out: Path) -> int:
    """Write the selected elements of a JSON array file."""
    items = json.loads(source.read_text(encoding="utf-8"))
    out.write_text(
        json.dumps([items[r] for r in rows], indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return 0
