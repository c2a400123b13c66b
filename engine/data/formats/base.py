"""What every format reader shares: its options, field names, and the checks that make a row.

A reader is a function ``read(opts: ReadOptions) -> Iterator[Draft | RowProblem]``: it yields
one item per data row, in file order. A :class:`Draft` is a row turned into an Example whose
multiple-choice answers are still as the file spells them; the conventions that need the whole
file (answer letters, indices or texts; repeated ids; 1/0 yes/no answers; the scoring metric)
are applied afterwards by :mod:`priorscope.engine.data.conventions`. Problems with the whole
file (unreadable, a required column missing) raise :class:`~priorscope.engine.errors.DataError`
instead, because no row of such a file can be trusted.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from priorscope.engine.data.example import METRICS, Example, SourceRef
from priorscope.engine.data.images import decode_image, open_image, read_image_file
from priorscope.engine.data.problems import RowFault, RowProblem
from priorscope.engine.errors import DataError, ImageError, UsageError, did_you_mean

# Fields a column mapping can name: {field: column in the file}.
FIELDS: tuple[str, ...] = (
    "id",
    "image",
    "image_path",
    "question",
    "hint",
    "answer",
    "options",
    "category",
    "benchmark",
)
# What a row without any image becomes: "auto" follows each format's convention (a null image
# in parquet and a missing "image" key in JSONL mean a text-only item; an empty TSV cell is an
# error), "text-only" accepts every such row, "error" refuses every such row.
MISSING_IMAGE = ("auto", "text-only", "error")
# Repeated ids: "auto" derives unique ids in parquet and JSONL files (LLaVA's and lmms-eval's
# MME and TextVQA files repeat question_id, one per image) and refuses them in VLMEvalKit TSV
# (whose image references need unique indices); "derive" and "error" force one behaviour.
DUPLICATE_IDS = ("auto", "derive", "error")
# Cells that mean "no value" in option and hint columns: what pandas writes for NaN as text.
NAN_TEXTS = frozenset({"nan"})


@dataclass(frozen=True)
class Conventions:
    """How to read the conventions that differ between benchmark files (see ``load``).

    ``answer_is_index``: None detects, per file, whether integer answers of multiple-choice rows
    are 0-based option indices (AI2D, ScienceQA) or option texts; True/False force it.
    ``yes_no_01``: None maps 1/0 answers to yes/no when the column is ``gt_answer``
    (HallusionBench), True maps them in any answer column, False never. ``metric``: ``auto``
    picks it from the benchmark name (ChartQA, PlotQA: relaxed; DocVQA, InfoVQA: anls; else vqa).
    """

    answer_is_index: bool | None = None
    yes_no_01: bool | None = None
    duplicate_ids: str = "auto"
    missing_image: str = "auto"
    metric: str = "auto"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("--duplicate-ids", self.duplicate_ids, DUPLICATE_IDS),
            ("--missing-image", self.missing_image, MISSING_IMAGE),
            ("--metric", self.metric, ("auto", *METRICS)),
        ):
            if value not in allowed:
                raise UsageError(
                    f"Expected {name} to be one of: {', '.join(allowed)}. Got {value!r} instead."
                )
        for name, flag in (
            ("answer_is_index", self.answer_is_index),
            ("yes_no_01", self.yes_no_01),
        ):
            if flag is not None and not isinstance(flag, bool):
                raise UsageError(
                    f"Expected {name} to be True, False or None. Got {flag!r} instead."
                )


@dataclass(frozen=True)
class ReadOptions:
    """What a reader needs: the file, column overrides, where images live, how hard to check."""

    path: Path
    format: str
    columns: Mapping[str, str] = field(default_factory=dict)
    image_root: Path | None = None
    benchmark: str | None = None
    max_pixels: int | None = None
    decode_images: bool = False
    conventions: Conventions = field(default_factory=Conventions)

    @property
    def root(self) -> Path:
        """Return the image folder: ``image_root`` or else the data file's folder."""
        return self.image_root if self.image_root is not None else self.path.parent

    @property
    def default_benchmark(self) -> str:
        """Return the benchmark name for rows without one: the option, else the file stem."""
        return self.benchmark or self.path.stem


@dataclass(frozen=True)
class Draft:
    """A row read into an Example whose multiple-choice answers are still as in the file.

    ``line`` is the 1-based line where the row starts (0 for parquet); ``columns`` names the
    file column of each field, for messages.
    """

    example: Example
    line: int
    columns: Mapping[str, str]


Reader = Callable[[ReadOptions], Iterator[Draft | RowProblem]]


def parse_columns(columns: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Return a validated {field: column} mapping from a dict or 'field=column' strings."""
    if columns is None:
        return {}
    pairs: list[tuple[str, str]] = []
    if isinstance(columns, Mapping):
        pairs = [(str(k), str(v)) for k, v in columns.items()]
    else:
        for item in columns:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip() or not value.strip():
                raise did_you_mean(str(item), [f"{f}=COLUMN" for f in FIELDS], "column mapping")
            pairs.append((key.strip(), value.strip()))
    for key, _ in pairs:
        if key not in FIELDS:
            raise did_you_mean(key, FIELDS, "column-mapping field")
    return dict(pairs)


def pick_column(
    opts: ReadOptions, available: Sequence[str], name: str, defaults: Sequence[str]
) -> str | None:
    """Return the file column holding field ``name``: the mapped one, else the first default."""
    if name in opts.columns:
        column = opts.columns[name]
        if column not in available:
            raise DataError(
                f"Column {column!r} (mapped to field {name!r}) missing in {opts.path.name} "
                f"(header). Expected one of: {', '.join(available)}. Fix the column mapping."
            )
        return column
    return next((c for c in defaults if c in available), None)


def require_column(
    opts: ReadOptions, column: str | None, name: str, defaults: Sequence[str]
) -> str:
    """Return ``column`` or raise the DataError that names the missing field and the fix."""
    if column is None:
        raise DataError(
            f"Column {defaults[0]!r} missing in {opts.path.name} (header). Expected one of: "
            f"{', '.join(defaults)}. Pass --column {name}=NAME to name the column that holds it."
        )
    return column


def is_missing(value: object) -> bool:
    """Return True for None and float NaN (what pandas and pyarrow use for an empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def clean_text(value: object) -> str:
    """Return ``value`` as stripped text; None and NaN become ''."""
    if is_missing(value):
        return ""
    return str(value).strip()


def optional_text(value: object) -> str:
    """Return an option or hint cell as text; '' for None, NaN and the text 'nan'.

    pandas writes a missing option or hint as NaN, which becomes the text "nan" once a file is
    converted with ``astype(str)``; VLMEvalKit drops such cells, so they are no option here.
    """
    text = clean_text(value)
    return "" if text.lower() in NAN_TEXTS else text


def parse_list_literal(text: str) -> list[object] | None:
    """Return the list a JSON or Python list literal spells, or None when it is no list."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return list(value) if isinstance(value, list | tuple) else None


def parse_answers(value: object, column: str) -> tuple[str, ...]:
    """Return gold answers from a cell: a string, a list, or a list literal such as '["a","b"]'."""
    items: object = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            items = parse_list_literal(text)
            if items is None:
                raise RowFault(
                    column,
                    f"Expected an answer or a list of answers. Got {text[:60]!r}, which "
                    "looks like a list but does not parse, instead.",
                )
        else:
            items = [text]
    if isinstance(items, list | tuple):
        answers = tuple(_answer_text(a) for a in items)
    else:
        answers = (clean_text(items),)
    answers = tuple(a for a in answers if a)
    if not answers:
        raise RowFault(column, f"Expected a gold answer. Got {value!r} instead. Fill it in.")
    return answers


def _answer_text(item: object) -> str:
    # HF VQA sets store answers as [{"answer": "2", "answer_confidence": "yes", ...}, ...].
    if isinstance(item, Mapping) and "answer" in item:
        return clean_text(item["answer"])
    return clean_text(item)


def contiguous_options(cells: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """Return option texts from (label, text) cells in label order; a gap is a RowFault."""
    options: list[str] = []
    gap = ""
    for label, text in cells:
        if not text:
            gap = gap or label
            continue
        if gap:
            raise RowFault(
                label,
                f"Expected options without gaps. Got option {label} filled while option {gap} "
                "is empty instead. Fill the empty option or move the later ones up.",
            )
        options.append(text)
    return tuple(options)


def check_image(data: bytes, opts: ReadOptions, where: str) -> None:
    """Raise RowFault('image', ...) unless ``data`` is an acceptable image (header or full)."""
    try:
        if opts.decode_images:
            decode_image(data, where=where, max_pixels=opts.max_pixels)
        else:
            open_image(data, where=where, max_pixels=opts.max_pixels)
    except ImageError as exc:
        raise RowFault("image", _strip_where(str(exc), where)) from exc


def _strip_where(message: str, where: str) -> str:
    prefix = f"{where}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


@dataclass
class RowFields:
    """The parsed fields of one row, before they become an Example.

    ``images`` holds every image of the row in order (empty: none). ``absent_means_text_only``
    says the format's convention reads a row without an image as a text-only item.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    images: tuple[bytes, ...]
    options: tuple[str, ...] = ()
    hint: str = ""
    category: str = ""
    benchmark: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    absent_means_text_only: bool = False


def build_draft(
    fields: RowFields, opts: ReadOptions, row: int, columns: Mapping[str, str], line: int = 0
) -> Draft:
    """Return the Draft for ``fields`` after the checks every format shares.

    ``columns`` names the file column of each field, for error messages.
    """
    if not fields.id:
        raise RowFault(columns.get("id", "id"), "Expected a non-empty id. Got '' instead.")
    if not fields.question:
        raise RowFault(columns.get("question", "question"), "Expected a question. Got '' instead.")
    if not fields.images:
        _check_text_only(fields, opts, columns)
    for i, data in enumerate(fields.images):
        where = f"{opts.path.name} row {row}"
        try:
            check_image(data, opts, where)
        except RowFault as fault:
            if len(fields.images) == 1:
                raise
            raise RowFault(
                columns.get("image", "image"),
                f"Image {i + 1} of the row's {len(fields.images)} images: {fault.reason}",
            ) from fault
    first, *rest = fields.images or (None,)
    example = Example(
        id=fields.id,
        question=fields.question,
        answers=fields.answers,
        image_bytes=first,
        options=fields.options,
        hint=fields.hint,
        category=fields.category,
        benchmark=fields.benchmark or opts.default_benchmark,
        metadata=dict(fields.metadata),
        source=SourceRef(str(opts.path), opts.format, row),
        extra_images=tuple(b for b in rest if b is not None),
    )
    return Draft(example, line, dict(columns))


def _check_text_only(fields: RowFields, opts: ReadOptions, columns: Mapping[str, str]) -> None:
    policy = opts.conventions.missing_image
    if policy == "text-only" or (policy == "auto" and fields.absent_means_text_only):
        return
    raise RowFault(
        columns.get("image", "image"),
        "Expected an image (inline or a path). Got neither instead. If the benchmark has "
        "text-only questions (ScienceQA, HallusionBench), pass --missing-image text-only to "
        "load such rows as text-only items.",
    )


def problem(opts: ReadOptions, row: int, fault: RowFault, line: int = 0) -> RowProblem:
    """Return the RowProblem for a fault in row ``row``."""
    return RowProblem(str(opts.path), row, fault.column, fault.reason, line)


def image_from_path(opts: ReadOptions, relative: str, column: str, row: int) -> bytes:
    """Return the bytes of image file ``relative`` under the image folder, or raise RowFault."""
    where = f"{opts.path.name} row {row}"
    try:
        return read_image_file(opts.root, relative, where=where)
    except ImageError as exc:
        raise RowFault(column, _strip_where(str(exc), where)) from exc
