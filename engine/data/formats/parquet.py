"""Hugging Face parquet: the files ``datasets`` writes and the Hub serves.

Columns found by name (first match wins; remap with ``columns={field: column}``): id from
``id``, ``question_id``, ``index``, ``qid`` or ``idx`` (the 0-based row number when none
exists); image from ``image`` or ``img`` as a ``{bytes, path}`` struct (``datasets``' Image
feature), raw bytes, a path string relative to the image folder, or a list of these (a
multi-image row, as in SEED-Bench); without an image column, from ``image_1``, ``image_2``, ...
(MMMU, BLINK), every non-null one in order. A null image is a text-only item (ScienceQA,
HallusionBench). Question from ``question``, ``text`` or ``prompt``; gold answers from
``answer``, ``answers``, ``label`` or ``gt_answer`` (a string, a list of strings, or VQA-style a
list of ``{"answer": ...}`` records); options from a list column ``options`` or ``choices`` (a
list, or a JSON or Python list literal as MMMU writes it), or from columns ``A``, ``B``, ... or
``choice_a``, ``choice_b``, ... (SEED-Bench); ``hint``; category from ``category``,
``question_type`` or ``subject``. Option and hint cells that are null, NaN or the text "nan" are
empty. Other scalar columns go to metadata as text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from priorscope.engine.data.example import OPTION_LABELS
from priorscope.engine.data.formats.base import (
    Draft,
    ReadOptions,
    RowFields,
    build_draft,
    clean_text,
    contiguous_options,
    image_from_path,
    is_missing,
    optional_text,
    parse_answers,
    parse_list_literal,
    pick_column,
    problem,
)
from priorscope.engine.data.problems import RowFault, RowProblem
from priorscope.engine.errors import DataError

NAME = "hf-parquet"
DEFAULTS: dict[str, tuple[str, ...]] = {
    "id": ("id", "question_id", "index", "qid", "idx"),
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
# Multi-image columns as MMMU (image_1..image_7) and BLINK (image_1..image_4) name them.
_NUMBERED_IMAGE = "image_{}"


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


def read(opts: ReadOptions) -> Iterator[Draft | RowProblem]:
    """Yield one Draft or RowProblem per row of the parquet file ``opts.path``."""
    parquet = _open(opts)
    header = list(parquet.schema_arrow.names)
    cols = {name: pick_column(opts, header, name, d) for name, d in DEFAULTS.items()}
    numbered = [] if cols["image"] else _numbered_images(header)
    for name in ("question", "image"):
        if cols[name] is None and not (name == "image" and (cols["image_path"] or numbered)):
            raise DataError(
                f"Column {DEFAULTS[name][0]!r} missing in {opts.path.name} (schema). Expected "
                f"one of: {', '.join(DEFAULTS[name])}. Pass --column {name}=NAME to name it."
            )
    labels = [] if cols["options"] else _option_columns(header)
    used = {c for c in cols.values() if c} | set(labels) | set(numbered)
    names = {k: v for k, v in cols.items() if v}
    if numbered:
        names["image"] = f"{numbered[0]}..{numbered[-1]}"
    row = 0
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
        for record in batch.to_pylist():
            try:
                fields = _fields(record, row, cols, labels, numbered, used, opts)
                yield build_draft(fields, opts, row, names)
            except RowFault as fault:
                yield problem(opts, row, fault)
            row += 1


def _numbered_images(header: list[str]) -> list[str]:
    out = []
    for i in range(1, len(header) + 1):
        if _NUMBERED_IMAGE.format(i) not in header:
            break
        out.append(_NUMBERED_IMAGE.format(i))
    return out


def _option_columns(header: list[str]) -> list[str]:
    """Return the option columns: ``A``, ``B``, ... or else ``choice_a``, ``choice_b``, ..."""
    for spell in (str.upper, lambda label: f"choice_{label.lower()}"):
        labels = []
        for label in OPTION_LABELS:
            if spell(label) not in header:
                break
            labels.append(spell(label))
        if labels:
            return labels
    return []


def _fields(
    record: Mapping[str, Any],
    row: int,
    cols: Mapping[str, str | None],
    labels: list[str],
    numbered: list[str],
    used: set[str],
    opts: ReadOptions,
) -> RowFields:
    def get(name: str) -> Any:
        column = cols[name]
        return record.get(column) if column else None

    if cols["options"]:
        options = _option_list(get("options"), cols["options"])
    else:
        options = contiguous_options([(lb, optional_text(record.get(lb))) for lb in labels])
    answer_col = cols["answer"]
    if numbered:
        cells = [record.get(c) for c in numbered]
        images = tuple(
            b for c, v in zip(numbered, cells, strict=True) for b in _image(v, c, opts, row)
        )
    else:
        images = _image(get("image"), cols["image"] or "image", opts, row)
        if not images and isinstance(get("image_path"), str) and get("image_path").strip():
            path_col = cols["image_path"] or "image_path"
            images = (image_from_path(opts, get("image_path").strip(), path_col, row),)
    return RowFields(
        id=clean_text(get("id")) if cols["id"] else str(row),
        question=clean_text(get("question")),
        answers=parse_answers(get("answer"), answer_col) if answer_col else (),
        images=images,
        options=options,
        hint=optional_text(get("hint")),
        category=clean_text(get("category")),
        benchmark=clean_text(get("benchmark")),
        metadata={k: _meta_text(v) for k, v in record.items() if k not in used and _is_meta(v)},
        absent_means_text_only=True,
    )


def _option_list(value: Any, column: str) -> tuple[str, ...]:
    if is_missing(value):
        return ()
    if isinstance(value, str) and value.strip().startswith("["):
        parsed = parse_list_literal(value)  # MMMU writes options as a Python list literal
        value = parsed if parsed is not None else value
    if not isinstance(value, list | tuple):
        raise RowFault(
            column, f"Expected a list of option texts. Got {type(value).__name__} instead."
        )
    return contiguous_options([(OPTION_LABELS[i], optional_text(v)) for i, v in enumerate(value)])


def _image(value: Any, column: str, opts: ReadOptions, row: int) -> tuple[bytes, ...]:
    """Return the images of one image cell: a struct, bytes, a path, or a list of those."""
    if isinstance(value, list | tuple):
        out: list[bytes] = []
        for i, item in enumerate(value):
            try:
                out.extend(_image(item, column, opts, row))
            except RowFault as fault:
                raise RowFault(
                    column, f"Image {i + 1} of the row's {len(value)} images: {fault.reason}"
                ) from fault
        return tuple(out)
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data:
            return (bytes(data),)
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return (bytes(value),) if value else ()
    if isinstance(value, str) and value.strip():
        return (image_from_path(opts, value.strip(), column, row),)
    if value not in (None, ""):
        raise RowFault(
            column,
            f"Expected an image as a {{bytes, path}} struct, bytes, a path or a list of these. "
            f"Got {type(value).__name__} instead.",
        )
    return ()


def _is_meta(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _meta_text(value: Any) -> str:
    return "" if value is None else str(value)
