"""VLMEvalKit TSV: one row per question, images inline as base64.

Columns (names can be remapped with ``columns={field: column}``): ``index`` (the id), ``image``
(base64 of the image file, or for a multi-image row (MMMU, BLINK) a JSON or Python list literal
of base64 strings; a value of 64 characters or fewer is instead the ``index`` of another row
whose image(s) this row reuses, as VLMEvalKit writes repeated images), optional ``image_path``
(used when ``image`` is empty; relative to the image folder; a list literal for several),
``question``, optional ``hint``, option columns ``A``, ``B``, ``C``, ... (empty cells end a
row's options), ``answer`` (the option letter for multiple choice; a JSON or Python list literal
for several gold answers), optional ``category`` and ``benchmark``. Every other column
(``l2-category``, ``split``, the synth's ``template``, ...) is kept as text in
``Example.metadata``. Only an empty cell counts as missing, except that an option or hint cell
holding "nan" (pandas' NaN written as text) is empty too; "None" and the like are kept as text.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections.abc import Iterator

from priorscope.engine.data.example import OPTION_LABELS
from priorscope.engine.data.formats.base import (
    Draft,
    ReadOptions,
    RowFields,
    build_draft,
    contiguous_options,
    image_from_path,
    optional_text,
    parse_answers,
    parse_list_literal,
    pick_column,
    problem,
    require_column,
)
from priorscope.engine.data.problems import RowFault, RowProblem
from priorscope.engine.errors import DataError

NAME = "vlmevalkit-tsv"
DEFAULTS: dict[str, tuple[str, ...]] = {
    "id": ("index",),
    "image": ("image",),
    "image_path": ("image_path",),
    "question": ("question",),
    "hint": ("hint",),
    "answer": ("answer",),
    "category": ("category",),
    "benchmark": ("benchmark",),
}
# A cell this short is a reference to another row's index, not base64 (VLMEvalKit's rule).
REFERENCE_MAX_CHARS = 64


def _raise_field_limit() -> None:
    # Base64 images are far longer than csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _read_rows(opts: ReadOptions) -> tuple[list[str], list[tuple[int, int, list[str]]]]:
    """Return the header and (row, first line, cells) for each non-blank data row."""
    _raise_field_limit()
    rows: list[tuple[int, int, list[str]]] = []
    try:
        with opts.path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if not header:
                raise DataError(
                    f"Expected a header row of column names in {opts.path.name}. Got an empty "
                    "file instead."
                )
            line = reader.line_num + 1
            for cells in reader:
                if cells:
                    rows.append((len(rows), line, cells))
                line = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Expected UTF-8 text in {opts.path.name}. Got bytes that are not UTF-8 at offset "
            f"{exc.start} instead. Re-save the file as UTF-8."
        ) from exc
    except csv.Error as exc:
        raise DataError(
            f"Expected a tab-separated file in {opts.path.name}. Got a CSV error instead: {exc}."
        ) from exc
    return [h.strip() for h in header], rows


def read(opts: ReadOptions) -> Iterator[Draft | RowProblem]:
    """Yield one Draft or RowProblem per data row of the TSV ``opts.path``."""
    header, rows = _read_rows(opts)
    cols = {name: pick_column(opts, header, name, d) for name, d in DEFAULTS.items()}
    require_column(opts, cols["id"], "id", DEFAULTS["id"])
    require_column(opts, cols["question"], "question", DEFAULTS["question"])
    if cols["image"] is None and cols["image_path"] is None:
        require_column(opts, None, "image", ("image", "image_path"))
    labels = []
    for label in OPTION_LABELS:
        if label not in header:
            break
        labels.append(label)
    used = {c for c in cols.values() if c} | set(labels)
    extra = [c for c in header if c not in used]
    position = {name: i for i, name in enumerate(header)}
    images = _ImageTable(header, rows, cols, opts)
    names = {k: v for k, v in cols.items() if v}
    for row, line, cells in rows:
        try:
            if len(cells) != len(header):
                raise RowFault(
                    "",
                    f"Expected {len(header)} tab-separated cells, as in the header. Got "
                    f"{len(cells)} instead. Check for a stray or missing tab in this row.",
                )

            def cell(column: str | None, cells: list[str] = cells) -> str:
                return cells[position[column]].strip() if column else ""

            fields = RowFields(
                id=cell(cols["id"]),
                question=cell(cols["question"]),
                answers=parse_answers(cell(cols["answer"]), names["answer"])
                if cols["answer"]
                else (),
                images=images.images(row, cells),
                options=contiguous_options([(lb, optional_text(cell(lb))) for lb in labels]),
                hint=optional_text(cell(cols["hint"])),
                category=cell(cols["category"]),
                benchmark=cell(cols["benchmark"]),
                metadata={c: cell(c) for c in extra},
            )
            yield build_draft(fields, opts, row, names, line)
        except RowFault as fault:
            yield problem(opts, row, fault, line)


class _ImageTable:
    """Resolves a row's images: inline base64 (one or a list), a reference to another row, or
    image path(s)."""

    def __init__(
        self,
        header: list[str],
        rows: list[tuple[int, int, list[str]]],
        cols: dict[str, str | None],
        opts: ReadOptions,
    ) -> None:
        self.opts = opts
        self.image_col = header.index(cols["image"]) if cols["image"] else None
        self.path_col = header.index(cols["image_path"]) if cols["image_path"] else None
        self.image_name = cols["image"] or "image"
        self.path_name = cols["image_path"] or "image_path"
        id_col = header.index(cols["id"]) if cols["id"] else 0
        self.inline: dict[str, str] = {}
        if self.image_col is not None:
            for _, _, cells in rows:
                if len(cells) > max(id_col, self.image_col):
                    value = cells[self.image_col].strip()
                    if len(value) > REFERENCE_MAX_CHARS:
                        self.inline.setdefault(cells[id_col].strip(), value)
        self.decoded: dict[str, tuple[bytes, ...]] = {}

    def images(self, row: int, cells: list[str]) -> tuple[bytes, ...]:
        """Return the image bytes of a row, in order; () when it names no image at all."""
        value = cells[self.image_col].strip() if self.image_col is not None else ""
        if len(value) > REFERENCE_MAX_CHARS:
            return _decode_cell(value, self.image_name)
        if value:
            if value not in self.inline:
                raise RowFault(
                    self.image_name,
                    f"Expected base64 image data, or the index of another row whose image this "
                    f"row reuses (a value of {REFERENCE_MAX_CHARS} characters or fewer). Got "
                    f"{value!r}, which is no row's index with an inline image, instead.",
                )
            if value not in self.decoded:  # share the bytes objects between reusing rows
                self.decoded[value] = _decode_cell(self.inline[value], self.image_name)
            return self.decoded[value]
        relative = cells[self.path_col].strip() if self.path_col is not None else ""
        if not relative:
            return ()
        paths = parse_list_literal(relative) if relative.startswith("[") else None
        if paths is None:
            return (image_from_path(self.opts, relative, self.path_name, row),)
        return tuple(image_from_path(self.opts, str(p).strip(), self.path_name, row) for p in paths)


def _decode_cell(value: str, column: str) -> tuple[bytes, ...]:
    """Return the images of an ``image`` cell: one base64 string or a list literal of them."""
    if not value.startswith("["):
        return (_b64decode(value, column),)
    items = parse_list_literal(value)
    if items is None or not items or not all(isinstance(x, str) for x in items):
        raise RowFault(
            column,
            f"Expected base64 of an image file, or a list literal of base64 strings for a "
            f"multi-image row (['iVBOR...', 'iVBOR...']). Got {len(value)} characters starting "
            f"with {value[:12]!r} that are neither instead. Write the list with json.dumps.",
        )
    out = []
    for i, item in enumerate(items):
        try:
            out.append(_b64decode(str(item), column))
        except RowFault as fault:
            raise RowFault(
                column, f"Image {i + 1} of the row's {len(items)} images: {fault.reason}"
            ) from fault
    return tuple(out)


def _b64decode(value: str, column: str) -> bytes:
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RowFault(
            column,
            f"Expected base64 of an image file. Got {len(value)} characters that are not valid "
            f"base64 ({exc}) instead. Re-encode the image with base64.b64encode.",
        ) from exc
