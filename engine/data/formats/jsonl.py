"""LLaVA-style JSONL: one JSON object per line, images as files in an image folder.

Fields found by name (remap with ``columns={field: key}``): id from ``question_id`` or ``id``
(LLaVA's MME and TextVQA files repeat it; see ``duplicate_ids`` in ``load``); image from
``image`` (a path relative to the image folder, by default the file's own folder, or a list of
paths for a multi-image row; paths that resolve outside the folder are refused); a line without
an ``image`` key is a text-only item, as LLaVA's own loaders read it (ScienceQA); question from
``text``, ``question`` or ``prompt``; optional gold answers from ``answer``, ``answers``,
``gpt_answer`` or ``label`` (POPE); optional ``options`` (a list); optional ``hint``,
``category``, ``benchmark``. Other scalar fields go to metadata as text. The row number of a
line is its 0-based line number in the file; blank lines are ignored.
"""

from __future__ import annotations

import json
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
    optional_text,
    parse_answers,
    problem,
)
from priorscope.engine.data.problems import RowFault, RowProblem
from priorscope.engine.errors import DataError

NAME = "llava-jsonl"
DEFAULTS: dict[str, tuple[str, ...]] = {
    "id": ("question_id", "id"),
    "image": ("image",),
    "image_path": ("image_path",),
    "question": ("text", "question", "prompt"),
    "hint": ("hint",),
    "answer": ("answer", "answers", "gpt_answer", "label"),
    "options": ("options", "choices"),
    "category": ("category",),
    "benchmark": ("benchmark",),
}


def _key(opts: ReadOptions, record: Mapping[str, Any], name: str) -> str | None:
    if name in opts.columns:
        return opts.columns[name]
    return next((k for k in DEFAULTS[name] if k in record), None)


def read(opts: ReadOptions) -> Iterator[Draft | RowProblem]:
    """Yield one Draft or RowProblem per non-blank line of the JSONL file ``opts.path``."""
    try:
        # Split on "\n" only: str.splitlines would also split inside JSON strings at U+2028.
        lines = opts.path.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Expected UTF-8 text in {opts.path.name}. Got bytes that are not UTF-8 at offset "
            f"{exc.start} instead. Re-save the file as UTF-8."
        ) from exc
    for row, text in enumerate(lines):
        if not text.strip():
            continue
        try:
            record = _record(text)
            names = {n: k for n in DEFAULTS if (k := _key(opts, record, n))}
            yield build_draft(_fields(record, names, opts, row), opts, row, names, row + 1)
        except RowFault as fault:
            yield problem(opts, row, fault, line=row + 1)


def _record(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise RowFault(
            "", f"Expected one JSON object on the line. Got invalid JSON instead ({exc})."
        ) from exc
    if not isinstance(record, dict):
        raise RowFault(
            "", f"Expected a JSON object on the line. Got a JSON {type(record).__name__} instead."
        )
    return record


def _fields(
    record: dict[str, Any], names: dict[str, str], opts: ReadOptions, row: int
) -> RowFields:
    for name in ("id", "question"):
        if name not in names:
            key = opts.columns.get(name, DEFAULTS[name][0])
            raise RowFault(
                key,
                f"Expected a {key!r} field. Got an object with keys {sorted(record)} instead. "
                f"Pass --column {name}=KEY to name the key that holds it.",
            )

    def get(name: str) -> Any:
        return record.get(names[name]) if name in names else None

    options: tuple[str, ...] = ()
    raw_options = get("options")
    if isinstance(raw_options, list):
        options = contiguous_options(
            [(OPTION_LABELS[i], optional_text(v)) for i, v in enumerate(raw_options)]
        )
    elif raw_options is not None:
        raise RowFault(
            names["options"], f"Expected a list of option texts. Got {raw_options!r} instead."
        )
    used = set(names.values())
    return RowFields(
        id=clean_text(get("id")),
        question=clean_text(get("question")),
        answers=parse_answers(get("answer"), names["answer"]) if "answer" in names else (),
        images=_images(get("image") or get("image_path"), names, opts, row),
        options=options,
        hint=optional_text(get("hint")),
        category=clean_text(get("category")),
        benchmark=clean_text(get("benchmark")),
        metadata={
            k: str(v)
            for k, v in record.items()
            if k not in used and isinstance(v, str | int | float | bool)
        },
        # A line without any image key is text-only (LLaVA); an explicitly mapped key must exist.
        absent_means_text_only=not ({"image", "image_path"} & (set(names) | set(opts.columns))),
    )


def _images(value: Any, names: dict[str, str], opts: ReadOptions, row: int) -> tuple[bytes, ...]:
    """Return the images a line names: one path or a list of paths; () for none."""
    key = names.get("image") or names.get("image_path", "image")
    paths = value if isinstance(value, list) else [value]
    out = []
    for i, path in enumerate(paths):
        relative = clean_text(path)
        if not relative:
            continue
        try:
            out.append(image_from_path(opts, relative, key, row))
        except RowFault as fault:
            if len(paths) == 1:
                raise
            raise RowFault(
                key, f"Image {i + 1} of the row's {len(paths)} images: {fault.reason}"
            ) from fault
    return tuple(out)
