"""File-level conventions: what a row means can depend on every other row of its file.

Applied by ``load`` after a reader has turned each row into a
:class:`~priorscope.engine.data.formats.base.Draft`, in this order:

1. **1/0 yes/no answers** (HallusionBench's ``gt_answer``): read as ``yes``/``no``.
2. **Options written into the question** (MMStar on the Hub: ``Options: A: ..., B: ...``) when
   every answered row without options has a single option letter as its answer.
3. **Multiple-choice answers**: a letter (also ``(B)`` or ``B.``, as BLINK writes it), an
   integer, or an option's text. Integers are 0-based option indices (AI2D, ScienceQA) or option
   texts; which one is decided once per file: the convention that fits every integer answer of
   the file and the other does not. When both fit (every row's options are numbers) or neither
   does, the file is refused with a message naming ``--answer-is-index/--answer-is-text``.
4. **Repeated ids** (LLaVA's and lmms-eval's MME and TextVQA files repeat ``question_id``):
   every occurrence of a repeated id gets ``{id}#{k}``, ``k`` its 0-based ordinal among the
   rows with that id in file order (stable as long as the file is), and keeps the file's id in
   ``metadata["source_id"]``. Unique ids are kept as they are.
5. **Metric**: ChartQA and PlotQA get relaxed accuracy, DocVQA and InfoVQA get ANLS (the
   reference harnesses' choices, by benchmark name), unless a metric is given.

Every convention applied is described in ``notes`` (printed by ``priorscope data check``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from priorscope.engine.data.example import OPTION_LABELS, Example
from priorscope.engine.data.formats.base import Draft, ReadOptions
from priorscope.engine.data.problems import RowProblem
from priorscope.engine.errors import DataError

# Benchmark-name fragments (case-insensitive) whose reference harnesses use another metric.
METRIC_BY_NAME: tuple[tuple[str, str], ...] = (
    ("chartqa", "relaxed"),
    ("plotqa", "relaxed"),
    ("docvqa", "anls"),
    ("infovqa", "anls"),
)
# Benchmarks graded by an LLM judge in the reference harness: exact match is only a lower bound.
JUDGED = ("mm-vet", "mmvet", "mm_vet", "llava-bench", "llavabench")
DERIVED_ID = "{id}#{k}"
_LETTER = re.compile(r"\(?([A-Z])\)?\.?")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class Finished:
    """The rows of a file after its conventions: Examples and problems in row order, and notes."""

    items: list[Example | RowProblem]
    notes: list[str] = field(default_factory=list)
    n_derived_ids: int = 0


def finish(rows: Sequence[Draft | RowProblem], opts: ReadOptions) -> Finished:
    """Return the file's rows with every convention of the module docstring applied."""
    notes: list[str] = []
    items: list[Draft | RowProblem] = list(rows)
    items = _yes_no_01(items, opts, notes)
    items = _inline_options(items, notes)
    resolved = _choice_answers(items, opts, notes)
    examples, derived = _unique_ids(resolved, opts, notes)
    examples = _metrics(examples, opts, notes)
    _check_images(examples, opts, notes)
    return Finished(examples, notes, derived)


def _problem(draft: Draft, column: str, reason: str) -> RowProblem:
    source = draft.example.source
    path, row = (source.path, source.row) if source else ("", -1)
    return RowProblem(path, row, column, reason, draft.line)


def _answer_column(draft: Draft) -> str:
    return draft.columns.get("answer", "answer")


# -- 1. 1/0 answers meaning yes/no --------------------------------------------------------------
def _yes_no_01(
    items: list[Draft | RowProblem], opts: ReadOptions, notes: list[str]
) -> list[Draft | RowProblem]:
    flag = opts.conventions.yes_no_01
    open_rows = [
        d for d in items if isinstance(d, Draft) and d.example.answers and not d.example.options
    ]
    if flag is False or not open_rows:
        return items
    binary = all(set(d.example.answers) <= {"0", "1"} for d in open_rows)
    named = all(_answer_column(d) == "gt_answer" for d in open_rows)
    if not binary or (flag is None and not named):
        return items
    words = {"1": "yes", "0": "no"}
    chosen = {id(d) for d in open_rows}
    notes.append(
        f"{len(open_rows)} answers of 1/0 in column {_answer_column(open_rows[0])!r} read as "
        "yes/no (HallusionBench convention); pass --answer-01-is-number to keep them as numbers."
    )
    return [
        replace(d, example=replace(d.example, answers=tuple(words[a] for a in d.example.answers)))
        if isinstance(d, Draft) and id(d) in chosen
        else d
        for d in items
    ]


# -- 2. options written into the question ----------------------------------------------------
def split_inline_options(question: str) -> tuple[str, tuple[str, ...]] | None:
    """Return (question stem, option texts) when ``question`` lists options A, B, ... in order.

    Markers are ``A.``, ``A:``, ``A)`` or ``(A)`` after a line start, a space, or a comma, in
    label order starting at A; at least two. Returns None when the question lists none.
    """
    starts: list[tuple[int, int]] = []  # (marker start, text start)
    position = 0
    for label in OPTION_LABELS:
        marker = re.compile(rf"(?:^|(?<=[\s,;]))(?:\({label}\)|{label}[.:)])\s")
        found = marker.search(question, position)
        if not found:
            break
        starts.append((found.start(), found.end()))
        position = found.end()
    if len(starts) < 2:
        return None
    texts = []
    for i, (_, text_start) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(question)
        texts.append(question[text_start:end].strip().rstrip(",;").strip())
    if not all(texts):
        return None
    stem = question[: starts[0][0]].rstrip()
    stem = re.sub(r"(?i)\b(?:options|choices)\s*:?\s*$", "", stem).rstrip()
    return (stem or question[: starts[0][0]].strip(), tuple(texts))


def _letter(answer: str) -> str | None:
    match = _LETTER.fullmatch(answer.strip())
    return match.group(1) if match else None


def _inline_options(items: list[Draft | RowProblem], notes: list[str]) -> list[Draft | RowProblem]:
    open_rows = [
        d for d in items if isinstance(d, Draft) and d.example.answers and not d.example.options
    ]
    if not open_rows or not all(all(_letter(a) for a in d.example.answers) for d in open_rows):
        return items
    split = {id(d): split_inline_options(d.example.question) for d in open_rows}
    if not any(split.values()):
        notes.append(
            f"{len(open_rows)} rows answer with an option letter but list no options: scored "
            "as open answers (the letter itself). Pass --column options=COLUMN if the file has "
            "them."
        )
        return items
    out: list[Draft | RowProblem] = []
    for d in items:
        parsed = split.get(id(d)) if isinstance(d, Draft) else None
        if not isinstance(d, Draft) or id(d) not in split:
            out.append(d)
        elif parsed is None:
            out.append(
                _problem(
                    d,
                    d.columns.get("question", "question"),
                    "Expected options A, B, ... in the question, as the other rows of the file "
                    "have (e.g. 'Options: A: cat, B: dog'). Got none instead. Add them or pass "
                    "--column options=COLUMN.",
                )
            )
        else:
            stem, options = parsed
            out.append(replace(d, example=replace(d.example, question=stem, options=options)))
    notes.append(
        f"{sum(v is not None for v in split.values())} rows had their options A, B, ... read "
        "from the question text (MMStar convention)."
    )
    return out


# -- 3. multiple-choice answers --------------------------------------------------------------
def _choice_answers(
    items: list[Draft | RowProblem], opts: ReadOptions, notes: list[str]
) -> list[Draft | RowProblem]:
    mc = [d for d in items if isinstance(d, Draft) and d.example.options and d.example.answers]
    as_index = _index_convention(mc, opts, notes)
    chosen = {id(d) for d in mc}
    out: list[Draft | RowProblem] = []
    for d in items:
        if not isinstance(d, Draft) or id(d) not in chosen:
            out.append(d)
            continue
        letters = [_to_letter(a, d.example.options, as_index) for a in d.example.answers]
        bad = next((a for a, x in zip(d.example.answers, letters, strict=True) if x is None), None)
        if bad is not None:
            out.append(_problem(d, _answer_column(d), _choice_reason(bad, d, as_index)))
        else:
            out.append(replace(d, example=replace(d.example, answers=tuple(letters))))
    return out


def _is_integer(answer: str) -> bool:
    return bool(_INTEGER.fullmatch(answer))


def _index_convention(mc: list[Draft], opts: ReadOptions, notes: list[str]) -> bool:
    """Return True when integer answers of multiple-choice rows are option indices."""
    integer_rows = [d for d in mc if any(_is_integer(a) for a in d.example.answers)]
    forced = opts.conventions.answer_is_index
    if forced is not None or not integer_rows:
        return bool(forced)
    ints = [
        (a, d.example.options) for d in integer_rows for a in d.example.answers if _is_integer(a)
    ]
    fits_index = sum(0 <= int(a) < len(options) for a, options in ints)
    fits_text = sum(a in options for a, options in ints)
    column = _answer_column(integer_rows[0])
    if fits_index == len(ints) and fits_text < len(ints):
        notes.append(
            f"Integer answers in column {column!r} read as 0-based option indices "
            f"({len(integer_rows)} rows; AI2D/ScienceQA convention)."
        )
        return True
    if fits_text == len(ints) and fits_index < len(ints):
        return False
    both = "both fit every row" if fits_index == len(ints) else "neither fits every row"
    raise DataError(
        f"{opts.path.name}, column {column!r}: Expected integer answers of multiple-choice rows "
        f"to be either 0-based option indices or option texts. Got {len(ints)} integer answers "
        f"of which {fits_index} are valid indices and {fits_text} equal an option's text "
        f"({both}) instead. Pass --answer-is-index or --answer-is-text to say which."
    )


def _to_letter(answer: str, options: tuple[str, ...], as_index: bool) -> str | None:
    labels = OPTION_LABELS[: len(options)]
    letter = _letter(answer)
    if letter is not None:
        return letter if letter in labels else None
    if _is_integer(answer) and as_index:
        return labels[int(answer)] if 0 <= int(answer) < len(options) else None
    if answer in options:
        return labels[options.index(answer)]
    folded = [i for i, o in enumerate(options) if o.casefold() == answer.casefold()]
    return labels[folded[0]] if len(folded) == 1 else None


def _choice_reason(answer: str, draft: Draft, as_index: bool) -> str:
    labels = ", ".join(OPTION_LABELS[: len(draft.example.options)])
    if as_index and _is_integer(answer):
        return (
            f"Expected a 0-based option index below {len(draft.example.options)} (the file's "
            f"integer answers are option indices). Got {answer!r} instead. Pass --answer-is-text "
            "if they are option texts."
        )
    return (
        f"Expected the answer to be one of the option letters {labels} or an option's text. "
        f"Got {answer!r} instead."
    )


# -- 4. repeated ids -------------------------------------------------------------------------
def _unique_ids(
    items: list[Draft | RowProblem], opts: ReadOptions, notes: list[str]
) -> tuple[list[Example | RowProblem], int]:
    drafts = [d for d in items if isinstance(d, Draft)]
    counts = Counter(d.example.id for d in drafts)
    repeated = {i for i, n in counts.items() if n > 1}
    policy = opts.conventions.duplicate_ids
    if policy == "auto":
        policy = "error" if opts.format == "vlmevalkit-tsv" else "derive"
    if repeated and policy == "error":
        _refuse_duplicates(drafts, repeated, opts)
    seen: Counter[str] = Counter()
    out: list[Example | RowProblem] = []
    for d in items:
        if not isinstance(d, Draft):
            out.append(d)
            continue
        ex = d.example
        if ex.id in repeated:
            k = seen[ex.id]
            seen[ex.id] += 1
            metadata = {**ex.metadata, "source_id": ex.id}
            ex = replace(ex, id=DERIVED_ID.format(id=ex.id, k=k), metadata=metadata)
        out.append(ex)
    derived = sum(counts[i] for i in repeated)
    if derived:
        clash = {e.id for e in out if isinstance(e, Example)}
        if len(clash) != len(drafts):
            raise DataError(
                f"{opts.path.name}: Expected ids derived as {DERIVED_ID} to be unique. Got a "
                "derived id that another row already uses instead. Give every row its own id."
            )
        notes.append(
            f"{derived} rows share {len(repeated)} ids; they were given unique ids "
            f"{DERIVED_ID} (k = 0, 1, ... in file order; the file's id is in "
            "metadata['source_id'])."
        )
    return out, derived


def _refuse_duplicates(drafts: list[Draft], repeated: set[str], opts: ReadOptions) -> None:
    first: dict[str, int] = {}
    for d in drafts:
        row = d.example.source.row if d.example.source else -1
        if d.example.id in repeated and d.example.id in first:
            raise DataError(
                f"{opts.path.name}, row {row}: Expected unique ids. Got id {d.example.id!r} "
                f"again (first seen in row {first[d.example.id]}) instead. Give every row its "
                "own id (later stages key their results on it), or pass --duplicate-ids derive "
                f"to number repeated ids as {DERIVED_ID}."
            )
        first.setdefault(d.example.id, row)


# -- 5. metric -------------------------------------------------------------------------------
def metric_for(benchmark: str) -> str:
    """Return the metric the reference harnesses use for a benchmark name (default 'vqa')."""
    name = benchmark.lower()
    return next((metric for key, metric in METRIC_BY_NAME if key in name), "vqa")


def _metrics(
    items: list[Example | RowProblem], opts: ReadOptions, notes: list[str]
) -> list[Example | RowProblem]:
    chosen = opts.conventions.metric
    out: list[Example | RowProblem] = []
    used: Counter[str] = Counter()
    judged: set[str] = set()
    for e in items:
        if isinstance(e, Example):
            metric = metric_for(e.benchmark) if chosen == "auto" else chosen
            if not e.is_multiple_choice and e.answers:
                used[metric] += 1
            if any(j in e.benchmark.lower() for j in JUDGED):
                judged.add(e.benchmark)
            e = replace(e, metric=metric) if metric != e.metric else e
        out.append(e)
    for metric, n in sorted(used.items()):
        if metric != "vqa":
            how = "given" if chosen != "auto" else "chosen by benchmark name"
            notes.append(f"{n} open answers scored by {metric} ({how}; pass --metric to change).")
    for name in sorted(judged):
        notes.append(
            f"{name} is graded by an LLM judge in the reference harness; priorscope scores its "
            "open answers by normalised exact match, a lower bound on that grade."
        )
    return out


# -- 6. images -------------------------------------------------------------------------------
def _check_images(items: list[Example | RowProblem], opts: ReadOptions, notes: list[str]) -> None:
    examples = [e for e in items if isinstance(e, Example)]
    text_only = sum(not e.has_image for e in examples)
    if examples and text_only == len(examples) and opts.conventions.missing_image == "auto":
        raise DataError(
            f"{opts.path.name}: Expected images. Got no image in any of its {len(examples)} "
            "rows instead. Name the image column with --column image=NAME, or pass "
            "--missing-image text-only if the benchmark really is text-only."
        )
    if text_only:
        notes.append(
            f"{text_only} rows have no image and were loaded as text-only items "
            "(Example.has_image is False): capture asks them without an image (condition "
            "'none', so pass --none) only."
        )
    multi = sum(len(e.images) > 1 for e in examples)
    if multi:
        most = max(len(e.images) for e in examples)
        notes.append(
            f"{multi} rows have several images (up to {most}): capture blurs each alike and "
            "gives the model all of them (families qwen2_5_vl, qwen2_vl, llava_next; llava "
            "refuses such rows, or skips them with --on-bad skip)."
        )
