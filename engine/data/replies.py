"""Score a model's answer file, written by another harness, against a benchmark file.

An answer file holds one reply per question: LLaVA's answer JSONL (``question_id``, ``text``),
VLMEvalKit's prediction files (``index``, ``prediction``; .xlsx, its default, needs openpyxl), or
any TSV, CSV, JSONL or parquet file with an id column and a reply column (named with ``id_column`` and
``reply_column``). Replies are matched to the benchmark's examples by id; an id the answer file
repeats is numbered ``ID#k`` in file order, as the loader numbers the benchmark's repeated ids
(:mod:`priorscope.engine.data.conventions`), so LLaVA's MME answers match its MME questions.

:func:`score_replies` scores every matched reply with one scorer; :func:`compare_scorers` reads
each reply with priorscope's rules and with VLMEvalKit's and reports where they part: the
agreement figure of issue 16, on real model outputs.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from priorscope.engine.data import scoring
from priorscope.engine.data.conventions import DERIVED_ID
from priorscope.engine.data.example import Example
from priorscope.engine.errors import DataError

# Column names tried in order when none is given. "answer" is never a reply by default: in
# VLMEvalKit's prediction files it is the gold answer.
ID_COLUMNS = ("question_id", "index", "id")
REPLY_COLUMNS = ("text", "prediction", "response", "output", "pred")


@dataclass(frozen=True)
class Replies:
    """The replies of one answer file by (derived) id, and the columns they came from."""

    path: Path
    by_id: dict[str, str]
    id_column: str
    reply_column: str
    n_derived: int  # replies whose id was numbered ID#k (the file repeats it)


def _records(path: Path) -> list[dict[str, object]]:
    """Return the rows of a JSONL, JSON array, TSV, CSV or parquet file as dicts."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(
                            f"{path}: line {n}: Expected one JSON object per line. Got invalid "
                            f"JSON ({exc.msg}). Fix or remove the line."
                        ) from None
        if not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: Expected JSON objects, one per reply. Got other values.")
        return rows
    if suffix in (".tsv", ".csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    if suffix == ".xlsx":  # VLMEvalKit's default prediction file
        return _xlsx_records(path)
    raise DataError(
        f"{path}: Expected an answer file ending in .jsonl, .json, .tsv, .csv, .parquet or .xlsx. "
        f"Got {suffix or 'no suffix'}. Save the predictions in one of those formats."
    )


def _xlsx_records(path: Path) -> list[dict[str, object]]:
    """Return the rows of the first sheet of an .xlsx file, its first row the column names."""
    try:
        import openpyxl
    except ImportError:
        raise DataError(
            f"{path}: Expected the openpyxl package to read .xlsx files. Got none; install it "
            "(pip install openpyxl, or priorscope[xlsx]) or save the predictions as TSV or CSV."
        ) from None
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = [str(c) if c is not None else "" for c in next(rows, ())]
        return [
            dict(zip(header, row, strict=False)) for row in rows if any(c is not None for c in row)
        ]
    finally:
        book.close()


def _pick(columns: Sequence[str], given: str | None, tried: Sequence[str], what: str) -> str:
    if given is not None:
        if given not in columns:
            raise DataError(
                f"Expected the {what} column {given!r} in the answer file. Got columns "
                f"{list(columns)}. Name one of them with --{what}-column."
            )
        return given
    for name in tried:
        if name in columns:
            return name
    raise DataError(
        f"Expected a {what} column ({', '.join(tried)}) in the answer file. Got columns "
        f"{list(columns)}. Name it with --{what}-column."
    )


def load_replies(
    path: str | Path, *, id_column: str | None = None, reply_column: str | None = None
) -> Replies:
    """Return the replies of an answer file (formats and id numbering in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Expected an answer file. Got {str(path)!r}, not found.")
    rows = _records(path)
    if not rows:
        raise DataError(f"{path}: Expected at least one reply. Got an empty file.")
    columns = list(rows[0])
    id_col = _pick(columns, id_column, ID_COLUMNS, "id")
    reply_col = _pick(columns, reply_column, REPLY_COLUMNS, "reply")
    ids = [_text(row.get(id_col)).strip() for row in rows]
    for n, key in enumerate(ids, 1):
        if not key:
            raise DataError(
                f"{path}: row {n}: Expected an id in column {id_col!r}. Got none; give every "
                "reply the id of its question."
            )
    counts = Counter(ids)
    seen: Counter[str] = Counter()
    by_id: dict[str, str] = {}
    derived = 0
    for key, row in zip(ids, rows, strict=True):
        if counts[key] > 1:
            by_id[DERIVED_ID.format(id=key, k=seen[key])] = _text(row.get(reply_col))
            seen[key] += 1
            derived += 1
        else:
            by_id[key] = _text(row.get(reply_col))
    return Replies(path, by_id, id_col, reply_col, derived)


def _text(value: object) -> str:
    """Return a cell as text: None and NaN are empty, an integral float its integer (1.0 -> 1)."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value)


@dataclass
class Scored:
    """Every matched example's score under one scorer, and what did not match."""

    scorer: str
    rows: list[tuple[Example, str, scoring.Score]] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)  # example ids without a reply
    unanswered_gold: int = 0  # of those, the ones with a gold answer
    unscored: list[str] = field(default_factory=list)  # replied, but the example has no gold
    unknown: list[str] = field(default_factory=list)  # reply ids no example has

    @property
    def accuracy(self) -> float:
        """Return the mean score of the replied examples with a gold answer."""
        return sum(s.score for _, _, s in self.rows) / len(self.rows) if self.rows else float("nan")

    @property
    def accuracy_all(self) -> float:
        """Return the mean score over every example with a gold answer, unanswered ones as 0."""
        n = len(self.rows) + self.unanswered_gold
        return sum(s.score for _, _, s in self.rows) / n if n else float("nan")

    def by_category(self) -> dict[str, tuple[int, float]]:
        """Return {category: (n, accuracy)} of the scored rows."""
        groups: dict[str, list[float]] = {}
        for ex, _, s in self.rows:
            groups.setdefault(ex.category or "(none)", []).append(s.score)
        return {k: (len(v), sum(v) / len(v)) for k, v in sorted(groups.items())}


def score_replies(
    examples: Sequence[Example], replies: Replies, scorer: str = "priorscope"
) -> Scored:
    """Return the Scored rows of ``replies`` against ``examples`` under ``scorer``."""
    scoring.check_scorer(scorer)
    if not any(ex.answers for ex in examples):
        raise DataError(
            "Expected gold answers in the benchmark file. Got none in any row (LLaVA's question "
            "files keep them in separate annotation files). Score against a file that carries "
            "the answers: the VLMEvalKit TSV or the Hugging Face parquet of the benchmark."
        )
    out = Scored(scorer)
    known = set()
    for ex in examples:
        known.add(ex.id)
        reply = replies.by_id.get(ex.id)
        if reply is None:
            out.unanswered.append(ex.id)
            out.unanswered_gold += bool(ex.answers)
        elif not ex.answers:
            out.unscored.append(ex.id)
        else:
            out.rows.append((ex, reply, scoring.score(ex, reply, scorer)))
    out.unknown = [key for key in replies.by_id if key not in known]
    if replies.by_id and len(out.unknown) == len(replies.by_id):
        theirs, ours = next(iter(replies.by_id)), next(iter(known), "")
        raise DataError(
            f"{replies.path}: Expected reply ids ({replies.id_column!r}) to match the "
            f"benchmark's example ids. Got none that does (replies like {theirs!r}, examples "
            f"like {ours!r}). Name the id column with --id-column, or score against the "
            "benchmark file the answers were made from."
        )
    return out


@dataclass(frozen=True)
class Disagreement:
    """One reply the two scorers read differently."""

    example_id: str
    rule: str
    reply: str
    priorscope: scoring.Score
    vlmevalkit: scoring.Score


@dataclass
class Comparison:
    """How often priorscope's and VLMEvalKit's readings of the same replies agree, by rule."""

    n: int = 0
    same_reading: int = 0  # same extracted answer (open answers: same score)
    same_verdict: int = 0  # both right or both wrong (what an accuracy depends on)
    by_rule: dict[str, list[int]] = field(default_factory=dict)  # rule -> [n, same reading]
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def reading_rate(self) -> float:
        return self.same_reading / self.n if self.n else float("nan")

    @property
    def verdict_rate(self) -> float:
        return self.same_verdict / self.n if self.n else float("nan")


def compare_scorers(ours: Scored, theirs: Scored) -> Comparison:
    """Return the agreement of two Scored runs of the same replies (priorscope, vlmevalkit)."""
    out = Comparison()
    for (ex, reply, a), (_, _, b) in zip(ours.rows, theirs.rows, strict=True):
        rule = scoring.rule(ex)
        open_answer = rule not in ("choice", "yes/no")
        same = abs(a.score - b.score) < 1e-9 if open_answer else a.answer == b.answer
        right_a, right_b = a.score >= 0.5, b.score >= 0.5
        out.n += 1
        out.same_reading += same
        out.same_verdict += right_a == right_b
        counts = out.by_rule.setdefault(rule, [0, 0])
        counts[0] += 1
        counts[1] += same
        if not same:
            out.disagreements.append(Disagreement(ex.id, rule, reply, a, b))
    return out


__all__ = [
    "Comparison",
    "Disagreement",
    "Replies",
    "Scored",
    "compare_scorers",
    "load_replies",
    "score_replies",
]
