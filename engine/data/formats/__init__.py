"""The registry of benchmark file formats: one reader module per format, one line each here."""

from __future__ import annotations

from pathlib import Path

from priorscope.engine.data.formats import jsonl, parquet, tsv
from priorscope.engine.data.formats.base import FIELDS, Reader, ReadOptions, parse_columns
from priorscope.engine.errors import DataError, did_you_mean

FORMATS: dict[str, Reader] = {
    tsv.NAME: tsv.read,
    parquet.NAME: parquet.read,
    jsonl.NAME: jsonl.read,
}
ALIASES: dict[str, str] = {"tsv": tsv.NAME, "parquet": parquet.NAME, "jsonl": jsonl.NAME}
EXTENSIONS: dict[str, str] = {
    ".tsv": tsv.NAME,
    ".parquet": parquet.NAME,
    ".pq": parquet.NAME,
    ".jsonl": jsonl.NAME,
    ".ndjson": jsonl.NAME,
}

__all__ = [
    "FIELDS",
    "FORMATS",
    "ReadOptions",
    "Reader",
    "detect_format",
    "parse_columns",
    "parse_format",
]


def parse_format(name: str) -> str:
    """Return the canonical format name for ``name`` or an alias of it ('tsv', 'parquet', ...)."""
    key = name.strip().lower()
    if key in FORMATS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise did_you_mean(name, [*FORMATS, *ALIASES], "data format")


def detect_format(path: Path) -> str:
    """Return the format of ``path``: by extension, else by sniffing its first bytes."""
    by_extension = EXTENSIONS.get(path.suffix.lower())
    if by_extension:
        return by_extension
    with path.open("rb") as handle:
        head = handle.read(65536)
    if head.startswith(b"PAR1"):
        return parquet.NAME
    first = head.lstrip().split(b"\n", 1)[0]
    if first.startswith(b"{"):
        return jsonl.NAME
    header = [c.strip().decode("utf-8", "replace") for c in first.split(b"\t")]
    if "index" in header and "question" in header:
        return tsv.NAME
    raise DataError(
        f"Expected a benchmark file in one of the formats {', '.join(FORMATS)}. Got "
        f"{path.name}, whose extension and first line match none of them, instead. Pass "
        "--format to name the format."
    )
