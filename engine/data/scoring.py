"""Score a model's text answer against an Example, as VLM evaluators (VLMEvalKit, lmms-eval) do.

- Multiple choice: the option letter is extracted by ranked rules (a bare letter, an announced
  letter, a parenthesised one, a leading one, a mentioned one, the option text; see
  :mod:`priorscope.engine.data.extraction`). Letters must be within the example's options.
- Yes/no (every gold answer normalises to ``yes`` or ``no``, and the metric is ``vqa``): the
  reply's yes or no, None when it says neither or contradicts itself
  (:func:`~priorscope.engine.data.extraction.normalize_yes_no`).
- Other open answers, by ``Example.metric``, after the reply's first line is taken and a leading
  "the answer is"/"answer:" dropped:

  - ``vqa``: exact match after :func:`normalize_answer` (case, punctuation, articles, number
    words to digits). With several gold answers, VQA soft accuracy: the mean over the
    leave-one-out subsets of the golds of ``min(1, matches / 3)``.
  - ``relaxed`` (ChartQA): 1 when the answer is within 5% of some gold number, or equals some
    gold text after normalisation.
  - ``anls`` (DocVQA, InfoVQA): the best ``1 - edit distance / length`` over the golds
    (lowercased, whitespace collapsed), 0 when under 0.5.

Every scorer returns a score in [0, 1] and says whether an answer could be extracted at all.
engine/data/COMPATIBILITY.md lists where this differs from VLMEvalKit's rule-based scoring;
``score(..., scorer="vlmevalkit")`` (``capture --scorer vlmevalkit``) scores exactly as those
rules do instead (:mod:`priorscope.engine.data.vlmevalkit`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from priorscope.engine.data.example import METRICS, Example
from priorscope.engine.data.extraction import (
    NO_WORDS,
    YES_WORDS,
    extract_choice,
    normalize_yes_no,
)
from priorscope.engine.data.normalize import (
    ARTICLES,
    NUMBER_WORDS,
    anls,
    normalize_answer,
    relaxed_match,
)
from priorscope.engine.errors import UsageError

__all__ = [
    "ARTICLES",
    "METRICS",
    "NO_WORDS",
    "NUMBER_WORDS",
    "RULES",
    "SCORERS",
    "YES_WORDS",
    "Score",
    "answer_surfaces",
    "answer_vocabulary",
    "candidates",
    "check_scorer",
    "extract_choice",
    "extract_open",
    "normalize_answer",
    "normalize_yes_no",
    "read_choice",
    "rule",
    "score",
    "soft_accuracy",
]


@dataclass(frozen=True)
class Score:
    """The extracted answer (None when nothing could be extracted) and its score in [0, 1]."""

    answer: str | None
    score: float
    extracted: bool


_ANNOUNCEMENT = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*", re.I)


def open_reply(text: str) -> str:
    """Return the reply's first non-empty line without a leading 'the answer is'/'answer:'."""
    lines = [line for line in text.strip().split("\n") if line.strip()]
    first = lines[0] if lines else ""
    return _ANNOUNCEMENT.sub("", first).strip()


def extract_open(text: str) -> str:
    """Return the normalised open answer in a reply, dropping a leading 'the answer is'."""
    return normalize_answer(open_reply(text))


def soft_accuracy(prediction: str, golds: Sequence[str]) -> float:
    """Return VQA soft accuracy: mean over leave-one-out subsets of min(1, matches / 3)."""
    if len(golds) < 2:
        return float(len(golds) == 1 and prediction == golds[0])
    hits = [g == prediction for g in golds]
    total = sum(hits)
    return sum(min(1.0, (total - hit) / 3.0) for hit in hits) / len(golds)


# priorscope's reading of replies, or VLMEvalKit's rule-based one (quirks included).
SCORERS: tuple[str, ...] = ("priorscope", "vlmevalkit")


def check_scorer(scorer: str, where: str = "--scorer") -> str:
    """Return ``scorer`` when it is one of :data:`SCORERS`; raise UsageError naming ``where``."""
    if scorer not in SCORERS:
        raise UsageError(
            f"Expected {where} to be one of {', '.join(SCORERS)}. Got {scorer!r} instead."
        )
    return scorer


def score(example: Example, text: str, scorer: str = "priorscope") -> Score:
    """Return the Score of reply ``text`` for ``example``.

    ``scorer`` ``priorscope`` applies the rules in the module docstring, ``vlmevalkit``
    VLMEvalKit's (:func:`priorscope.engine.data.vlmevalkit.score_reply`).
    """
    if not example.answers:
        raise UsageError(
            f"Expected example {example.id!r} to have a gold answer. Got none instead; it can "
            "be captured and analysed for invariance, but not scored."
        )
    if check_scorer(scorer, "scorer") == "vlmevalkit":
        from priorscope.engine.data.vlmevalkit import score_reply

        found, value, extracted = score_reply(rule(example), text, example.answers, example.options)
        return Score(found, value, extracted)
    if example.is_multiple_choice:
        letter = extract_choice(text, example.options)
        hit = letter is not None and letter in example.answers
        return Score(letter, float(hit), letter is not None)
    if example.metric in ("relaxed", "anls"):
        reply = open_reply(text)
        if not reply:
            return Score(None, 0.0, False)
        if example.metric == "relaxed":
            value = float(any(relaxed_match(reply, gold) for gold in example.answers))
        else:
            value = anls(reply, example.answers)
        return Score(reply, value, True)
    golds = [normalize_answer(g) for g in example.answers]
    prediction = normalize_yes_no(text) if _is_yes_no(golds) else (extract_open(text) or None)
    if prediction is None:
        return Score(None, 0.0, False)
    return Score(prediction, soft_accuracy(prediction, golds), True)


def _is_yes_no(golds: Sequence[str]) -> bool:
    return all(g in ("yes", "no") for g in golds)


# The rule :func:`score` applies to an example (stored per example as ``examples/metric``).
RULES: tuple[str, ...] = ("choice", "yes/no", *METRICS, "unscored")


def rule(example: Example) -> str:
    """Return which rule of :data:`RULES` scores ``example`` (``unscored``: no gold answer)."""
    if not example.answers:
        return "unscored"
    if example.is_multiple_choice:
        return "choice"
    if example.metric == "vqa" and _is_yes_no([normalize_answer(g) for g in example.answers]):
        return "yes/no"
    return example.metric


def answer_vocabulary(examples: Iterable[Example]) -> tuple[str, ...]:
    """Return the candidate answers of the open-ended examples, sorted by normalised form.

    Each open-ended example contributes its most frequent gold answer (by normalised form); a
    normalised form is spelled as its most common surface form (ties: the smallest string).
    """
    surfaces: dict[str, Counter[str]] = {}
    for example in examples:
        if example.is_multiple_choice or not example.answers:
            continue
        keys = Counter(normalize_answer(a) for a in example.answers)
        key = min(keys, key=lambda k: (-keys[k], k))
        if not key:
            continue
        forms = surfaces.setdefault(key, Counter())
        forms.update(a.strip() for a in example.answers if normalize_answer(a) == key)
    return tuple(min(forms, key=lambda s: (-forms[s], s)) for _, forms in sorted(surfaces.items()))


def answer_surfaces(examples: Iterable[Example]) -> tuple[str, ...]:
    """Return every gold answer of the open-ended examples as written (stripped), sorted.

    Unlike :func:`answer_vocabulary` (one spelling per normalised form), every spelling is
    kept: an answer read from a closed set must be able to come out as any of them.
    """
    return tuple(
        sorted(
            {
                a.strip()
                for ex in examples
                if ex.answers and not ex.is_multiple_choice
                for a in ex.answers
                if a.strip()
            }
        )
    )


def read_choice(text: str, options: Sequence[str], scorer: str = "priorscope") -> str | None:
    """Return the option letter ``scorer`` reads in ``text``, None when it reads none."""
    if check_scorer(scorer, "scorer") == "vlmevalkit":
        from priorscope.engine.data.vlmevalkit import choice_letter

        return choice_letter(text, options)
    return extract_choice(text, options)


def candidates(example: Example, vocabulary: Sequence[str] | None = None) -> tuple[str, ...]:
    """Return the answers whose log-probs capture compares for ``example``.

    The option letters for multiple choice, ("yes", "no") for yes/no questions, otherwise
    ``vocabulary`` (compute it once per benchmark with :func:`answer_vocabulary`).
    """
    if example.is_multiple_choice:
        return example.option_labels
    if example.answers and _is_yes_no([normalize_answer(a) for a in example.answers]):
        return ("yes", "no")
    if not vocabulary:
        raise UsageError(
            f"Expected an answer vocabulary for open-ended example {example.id!r}. Got none "
            "instead. Compute one with answer_vocabulary(examples) and pass it."
        )
    return tuple(vocabulary)
