"""Score a model's text answer against an Example, as VLM evaluators (VLMEvalKit, lmms-eval) do.

- Multiple choice: the option letter is extracted by ranked patterns (first that fires wins):
  1. the whole reply is a letter, possibly decorated: ``B``, ``b``, ``(B)``, ``B.``, ``**B**``;
  2. exactly one distinct in-range letter in parentheses anywhere: ``... so (B).``;
  3. a letter opening the reply followed by ``.``, ``)`` or ``:``: ``B. yellow``;
  4. an announced letter: ``the answer is B``, ``answer: B``, ``option B``, ``choice (B)``;
  5. the option text: the reply normalises to exactly one option's text, or contains exactly
     one option's text as whole words.
  Letters must be within the example's options; a case where two letters tie is not extracted.
- Yes/no (every gold answer normalises to ``yes`` or ``no``): the reply's first word if it is a
  yes/no word (yes, yeah, yep, true, correct / no, nope, false, incorrect), else the only one of
  ``yes``/``no`` the reply contains.
- Other open answers: exact match after :func:`normalize_answer` (case, punctuation, articles,
  number words to digits), after stripping a leading "the answer is"/"answer:". With several
  gold answers, VQA soft accuracy: the mean over the leave-one-out subsets of the golds of
  ``min(1, matches / 3)`` (10 subsets for the usual 10 golds).

Every scorer returns a score in [0, 1] and says whether an answer could be extracted at all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from priorscope.engine.data.example import OPTION_LABELS, Example
from priorscope.engine.errors import UsageError

ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_NAMES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
NUMBER_WORDS: dict[str, str] = {word: str(i) for i, word in enumerate(_NUMBER_NAMES.split(" "))}
YES_WORDS = frozenset({"yes", "yeah", "yep", "true", "correct"})
NO_WORDS = frozenset({"no", "nope", "false", "incorrect"})


@dataclass(frozen=True)
class Score:
    """The extracted answer (None when nothing could be extracted) and its score in [0, 1]."""

    answer: str | None
    score: float
    extracted: bool


def normalize_answer(text: str) -> str:
    """Return ``text`` lowercased, without punctuation or articles, number words as digits."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<=\d)\.(?=\d)", "\x00", text)  # keep decimal points through the next step
    text = text.replace("'", "")
    text = re.sub(r"[^\w\s\x00]|_", " ", text).replace("\x00", ".")
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def normalize_yes_no(text: str) -> str | None:
    """Return 'yes' or 'no' for a reply that says so, None when it says neither or both."""
    words = normalize_answer(text).split()
    if not words:
        return None
    if words[0] in YES_WORDS:
        return "yes"
    if words[0] in NO_WORDS:
        return "no"
    said = {w for w in words if w in ("yes", "no")}
    return said.pop() if len(said) == 1 else None


_BARE = re.compile(r"[\s(\[*'\"]*([A-Za-z])[\s)\].:*'\"]*")
_PAREN = re.compile(r"\(([A-Z])\)")
_LEADING = re.compile(r"\s*\**([A-Z])\**[.):]")
_ANNOUNCED = re.compile(
    r"(?i:\banswer\s*(?:is|:)|\boption|\bchoice)\s*(?i:option\s*)?[(*\s]*([A-Z])(?![A-Za-z])"
)


def extract_choice(text: str, options: Sequence[str]) -> str | None:
    """Return the option letter the reply ``text`` picks, or None (rules in the module doc)."""
    labels = OPTION_LABELS[: len(options)]
    bare = _BARE.fullmatch(text)
    if bare and bare.group(1).upper() in labels:
        return bare.group(1).upper()
    in_parens = {x for x in _PAREN.findall(text) if x in labels}
    if len(in_parens) == 1:
        return in_parens.pop()
    leading = _LEADING.match(text)
    if leading and leading.group(1) in labels:
        return leading.group(1)
    announced = [x for x in _ANNOUNCED.findall(text) if x in labels]
    if announced and len(set(announced)) == 1:
        return announced[0]
    return _match_option_text(text, options, labels)


def _match_option_text(text: str, options: Sequence[str], labels: str) -> str | None:
    reply = normalize_answer(text)
    if not reply:
        return None
    normalised = [normalize_answer(o) for o in options]
    exact = {labels[i] for i, o in enumerate(normalised) if o and o == reply}
    if len(exact) == 1:
        return exact.pop()
    padded = f" {reply} "
    contained = {labels[i] for i, o in enumerate(normalised) if o and f" {o} " in padded}
    return contained.pop() if len(contained) == 1 else None


def extract_open(text: str) -> str:
    """Return the normalised open answer in a reply, dropping a leading 'the answer is'."""
    first = text.strip().split("\n", 1)[0] if text.strip() else ""
    first = re.sub(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", "", first, flags=re.I)
    return normalize_answer(first)


def soft_accuracy(prediction: str, golds: Sequence[str]) -> float:
    """Return VQA soft accuracy: mean over leave-one-out subsets of min(1, matches / 3)."""
    if len(golds) < 2:
        return float(len(golds) == 1 and prediction == golds[0])
    hits = [g == prediction for g in golds]
    total = sum(hits)
    return sum(min(1.0, (total - hit) / 3.0) for hit in hits) / len(golds)


def score(example: Example, text: str) -> Score:
    """Return the Score of reply ``text`` for ``example`` (rules in the module docstring)."""
    if not example.answers:
        raise UsageError(
            f"Expected example {example.id!r} to have a gold answer. Got none instead; it can "
            "be captured and analysed for invariance, but not scored."
        )
    if example.is_multiple_choice:
        letter = extract_choice(text, example.options)
        hit = letter is not None and letter in example.answers
        return Score(letter, float(hit), letter is not None)
    golds = [normalize_answer(g) for g in example.answers]
    prediction = normalize_yes_no(text) if _is_yes_no(golds) else (extract_open(text) or None)
    if prediction is None:
        return Score(None, 0.0, False)
    return Score(prediction, soft_accuracy(prediction, golds), True)


def _is_yes_no(golds: Sequence[str]) -> bool:
    return all(g in ("yes", "no") for g in golds)


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
