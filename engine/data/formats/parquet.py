"""Hugging Face parquet: the files ``datasets`` writes and the Hub serves.

Columns found by name (first match wins; remap with ``columns={field: column}``): id from
``id``, ``question_id``, ``index`` or ``qid`` (the 0-based row number when none exists); image
from ``image`` or ``img`` as a ``{bytes, path}`` struct (``datasets``' Image feature), raw bytes,
or a path string relative to the image folder; question from ``question``, ``text`` or
``prompt``; gold answers from ``answer``, ``answers``, ``label`` or ``gt_answer`` (a string, a
list of strings, or VQA-style a list of ``{"answer": ...}`` records); options from a list column
``options`` or ``choices``, or from columns ``A``, ``B``, ...; ``hint``; category from
``category``, ``question_type`` or ``subject``. Other scalar columns go to metadata as text.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from priorscope.engine.data.example import OPTION_LABELS, Example
from priorscope.engine.data.formats.base import (
    ReadOptions,
    RowFields,
    build_example,
    clean_text,
    contiguous_options,
    image_from_path,
    parse_answers,
    pick_column,
    problem,
)
from priorscope.engine.data.problems import RowFault, RowProblem
from priorscope.engine.errors import DataError

NAME = "hf-parquet"
DEFAULTS: dict[str, tuple[str, ...]] = {
    "id": ("id", "question_id", "index", "qid"),
    "image": ("image", "img"),
    "image_path": ("image_path",),
    "question": ("question", "text", "prompt"),
    "hint": ("hint",),
    "answer": ("answer", "answers", "label", "gt_answer"),
    "options": ("options", "choices"),
    "category": ("category", "question_type", "subject"),
    "benchmark": ("benchmark",),
}
_BATCH_ROWS = 256


def _open(opts: ReadOptions) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(opts.path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"Expected a parquet file at {opts.path.name}. Got a file pyarrow cannot read "
            f"instead ({exc}). Pass --format to pick another format."
        ) from exc


def read(opts: ReadOptions) -> Iterator[Example | RowProblem]:
    """Yield one Example or RowProblem per row of the parquet file ``opts.path``."""
    parquet = _open(opts)
    header = list(parquet.schema_arrow.names)
    cols = {name: pick_column(opts, header, name, d) for name, d in DEFAULTS.items()}
    for name in ("question", "image"):
        if cols[name] is None and not (name == "image" and cols["image_path"]):
            raise DataError(
                f"Column {DEFAULTS[name][0]!r} missing in {opts.path.name} (schema). Expected "
                f"one of: {', '.join(DEFAULTS[name])}. Pass --column {name}=NAME to name it."
            )
    labels = []
    if cols["options"] is None:
        for label in OPTION_LABELS:
            if label not in header:
                break
            labels.append(label)
    used = {c for c in cols.values() if c} | set(labels)
    names = {k: v for k, v in cols.items() if v}
    row = 0
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
        for record in batch.to_pylist():
            try:
                yield build_example(
                    _fields(record, row, cols, labels, used, opts), opts, row, names
                )
            except RowFault as fault:
                yield problem(opts, row, fault)
            row += 1


def _fields(
    record: Mapping[str, Any],
    row: int,
    cols: Mapping[str, str | None],
    labels: list[str],
    used: set[str],
    opts: ReadOptions,
) -> RowFields:
    def get(name: str) -> Any:
        column = cols[name]
        return record.get(column) if column else None

    if cols["options"]:
        options = _option_list(get("options"), cols["options"])
    else:
        options = contiguous_options([(lb, clean_text(record.get(lb))) for lb in labels])
    answer_col = cols["answer"]
    return RowFields(
        id=clean_text(get("id")) if cols["id"] else str(row),
        question=clean_text(get("question")),
        answers=parse_answers(get("answer"), answer_col) if answer_col else (),
        image=_image(get("image"), get("image_path"), cols, opts, row),
        options=options,
        hint=clean_text(get("hint")),
        category=clean_text(get("category")),
        benchmark=clean_text(get("benchmark")),
        metadata={k: _meta_text(v) for k, v in record.items() if k not in used and _is_meta(v)},
    )


def _option_list(value: Any, column: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) and value.strip().startswith("["):
        with contextlib.suppress(ValueError):  # not JSON: reported as a non-list below
            value = json.loads(value)
    if not isinstance(value, list | tuple):
        raise RowFault(
            column, f"Expected a list of option texts. Got {type(value).__name__} instead."
        )
    return contiguous_options([(OPTION_LABELS[i], clean_text(v)) for i, v in enumerate(value)])


def _image(
    value: Any, path_value: Any, cols: Mapping[str, str | None], opts: ReadOptions, row: int
) -> bytes | None:
    column = cols["image"] or "image"
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data:
            return bytes(data)
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value) or None
    if isinstance(value, str) and value.strip():
        return image_from_path(opts, value.strip(), column, row)
    if value not in (None, ""):
        raise RowFault(
            column,
            f"Expected an image as a {{bytes, path}} struct, bytes or a path. Got "
            f"{type(value).__name__} instead.",
        )
    if isinstance(path_value, str) and path_value.strip():
        return image_from_path(opts, path_value.strip(), cols["image_path"] or "image_path", row)
    return None


def _is_meta(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _meta_text(value: Any) -> str:
    return "" if value is None else str(value)
