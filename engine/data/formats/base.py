"""What every format reader shares: its options, field names, and the checks that make an Example.

A reader is a function ``read(opts: ReadOptions) -> Iterator[Example | RowProblem]``: it yields
one item per data row, in file order. Problems with the whole file (unreadable, a required
column missing) raise :class:`~priorscope.engine.errors.DataError` instead, because no row of
such a file can be trusted.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from priorscope.engine.data.example import OPTION_LABELS, Example, SourceRef
from priorscope.engine.data.images import decode_image, open_image, read_image_file
from priorscope.engine.data.problems import RowFault, RowProblem
from priorscope.engine.errors import DataError, ImageError, did_you_mean

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

    @property
    def root(self) -> Path:
        """Return the image folder: ``image_root`` or else the data file's folder."""
        return self.image_root if self.image_root is not None else self.path.parent

    @property
    def default_benchmark(self) -> str:
        """Return the benchmark name for rows without one: the option, else the file stem."""
        return self.benchmark or self.path.stem


Reader = Callable[[ReadOptions], Iterator[Example | RowProblem]]


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


def clean_text(value: object) -> str:
    """Return ``value`` as stripped text; None becomes ''."""
    if value is None:
        return ""
    return str(value).strip()


def parse_answers(value: object, column: str) -> tuple[str, ...]:
    """Return gold answers from a cell: a string, a list, or a list literal such as '["a","b"]'."""
    items: object = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                items = json.loads(text)
            except ValueError:
                try:
                    items = ast.literal_eval(text)
                except (ValueError, SyntaxError) as exc:
                    raise RowFault(
                        column,
                        f"Expected an answer or a list of answers. Got {text[:60]!r}, which "
                        "looks like a list but does not parse, instead.",
                    ) from exc
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


def mc_answer(answers: tuple[str, ...], options: tuple[str, ...], column: str) -> tuple[str, ...]:
    """Return the gold option letters; an answer equal to an option's text becomes its letter."""
    labels = OPTION_LABELS[: len(options)]
    letters = []
    for answer in answers:
        if answer in labels:
            letters.append(answer)
        elif answer in options:
            letters.append(labels[options.index(answer)])
        else:
            raise RowFault(
                column,
                f"Expected the answer to be one of the option letters {', '.join(labels)} or "
                f"an option's text. Got {answer!r} instead.",
            )
    return tuple(letters)


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
    """The parsed fields of one row, before they become an Example."""

    id: str
    question: str
    answers: tuple[str, ...]
    image: bytes | None
    options: tuple[str, ...] = ()
    hint: str = ""
    category: str = ""
    benchmark: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def build_example(
    fields: RowFields, opts: ReadOptions, row: int, columns: Mapping[str, str]
) -> Example:
    """Return the Example for ``fields`` after the checks every format shares.

    ``columns`` names the file column of each field, for error messages.
    """
    if not fields.id:
        raise RowFault(columns.get("id", "id"), "Expected a non-empty id. Got '' instead.")
    if not fields.question:
        raise RowFault(columns.get("question", "question"), "Expected a question. Got '' instead.")
    if fields.image is None:
        raise RowFault(
            columns.get("image", "image"),
            "Expected an image (inline or a path). Got neither instead.",
        )
    check_image(fields.image, opts, f"{opts.path.name} row {row}")
    answers = fields.answers
    if fields.options and answers:
        answers = mc_answer(answers, fields.options, columns.get("answer", "answer"))
    return Example(
        id=fields.id,
        question=fields.question,
        answers=answers,
        image_bytes=fields.image,
        options=fields.options,
        hint=fields.hint,
        category=fields.category,
        benchmark=fields.benchmark or opts.default_benchmark,
        metadata=dict(fields.metadata),
        source=SourceRef(str(opts.path), opts.format, row),
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
