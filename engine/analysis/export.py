"""Export the grounded subset: items that need the image, in the benchmark's own file format.

An item is grounded when the model is correct on the clean image and wrong both under the severe
blur and under total obfuscation (each requirement and threshold configurable). The subset is
written so that the tools a user already has can evaluate on it:

* VLMEvalKit TSV: the header and the selected data rows copied byte for byte. A row whose
  ``image`` cell refers to another row's image (a value of at most 64 characters naming that
  row's ``index``) gets the referenced image inlined when that row is not exported too, because
  the reference would dangle otherwise; these rows are counted in the result.
* Parquet: the selected rows taken from the input table (schema and metadata kept).
* JSONL: the selected lines copied byte for byte.

The copying itself is the data layer's (priorscope.engine.data.export.export_source_rows), so
rows are numbered exactly as the loaders numbered them when the store was captured.

Rows are found through ``examples/source_row`` (0-based data row) and the dataset file recorded
in the store's ``dataset`` attribute, whose sha256 is checked so that a changed file is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.analysis.decay import resolve_levels
from priorscope.engine.data.export import export_source_rows
from priorscope.engine.data.formats import detect_format, parse_format
from priorscope.engine.errors import StoreError, UsageError
from priorscope.engine.store import ExampleTable, Store, open_store


@dataclass(frozen=True)
class GroundedConfig:
    """Which items count as grounded: correct on clean, wrong when the image is destroyed.

    Validated on construction, so a config built in Python is checked like the CLI's.
    """

    clean_at: float = 0.5  # correct on clean when score >= clean_at
    wrong_below: float = 0.5  # wrong under obfuscation when score < wrong_below
    severe: str | None = None  # the blur level used as "severe"; None = the most severe one
    require_severe: bool = True
    require_total: bool = True
    dataset: Path | None = None  # the input file, when it moved since capture

    def __post_init__(self) -> None:
        for name, flag, value in (
            ("clean_at", "--clean-at", self.clean_at),
            ("wrong_below", "--wrong-below", self.wrong_below),
        ):
            if not 0.0 < value <= 1.0:
                raise UsageError(f"Expected {name} ({flag}) in (0, 1]. Got {value} instead.")
        if not (self.require_severe or self.require_total):
            raise UsageError(
                "Expected at least one of severe and total obfuscation to be required. Got "
                "neither. Drop --no-severe or --no-total (require_severe, require_total)."
            )
        if self.dataset is not None and not isinstance(self.dataset, Path):
            object.__setattr__(self, "dataset", Path(self.dataset))


@dataclass(frozen=True)
class ExportResult:
    """What export_grounded wrote: the file, how many rows of how many, and rewritten rows."""

    out: Path
    format: str
    selected_ids: tuple[str, ...]
    n_examples: int
    inlined_images: int


def grounded_mask(score: np.ndarray, tables: ExampleTable, config: GroundedConfig) -> np.ndarray:
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
    store: Store | str | Path, out: str | Path, config: GroundedConfig | None = None
) -> ExportResult:
    """Return what was written after exporting the grounded items of ``store`` to ``out``.

    ``store`` is a Store or a path (opened once here).
    """
    config = config or GroundedConfig()
    snap = open_store(store).snapshot()
    tables = snap.examples()
    mask = grounded_mask(snap.outputs("score").astype(np.float32), tables, config)
    source, fmt = _dataset_file(snap.attrs, config)
    rows = tables.source_row[mask]
    if (rows < 0).any():
        raise StoreError(
            "Expected examples/source_row >= 0 for every exported example. Got -1 (row unknown). "
            "Export needs a store captured from a benchmark file."
        )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    inlined = export_source_rows(source, fmt, sorted(int(r) for r in rows), out_path)
    ids = tuple(tables.ids[i] for i in np.flatnonzero(mask))
    return ExportResult(out_path, fmt, ids, tables.n, inlined)


def dataset_path(attrs: dict[str, Any], override: Path | None) -> Path | None:
    """Return the store's one recorded dataset file (or ``override``); None when not one file."""
    if override is not None:
        return override
    files = list((attrs.get("dataset") or {}).get("files") or [])
    return Path(files[0]) if len(files) == 1 else None


def _dataset_file(attrs: dict[str, Any], config: GroundedConfig) -> tuple[Path, str]:
    """Return (input file, format key) of the store's dataset, its sha256 checked."""
    info = attrs.get("dataset") or {}
    path = dataset_path(attrs, config.dataset)
    if path is None:
        raise StoreError(
            f"Expected the store to record exactly one dataset file. Got {info.get('files')!r}. "
            "Pass --dataset FILE to name the input file the rows come from."
        )
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
    """Return the data layer's format name: the one recorded at capture, else detected."""
    try:
        return parse_format(recorded)
    except UsageError:
        return detect_format(path)
