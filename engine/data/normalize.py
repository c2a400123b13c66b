"""Open-answer normalisation and the open-answer metrics: exact match, relaxed accuracy, ANLS.

:func:`normalize_answer` follows the VQA evaluation's normaliser (``processPunctuation`` and
``processDigitArticle``, as VLMEvalKit and lmms-eval use it) where that normaliser is right, and
differs where it is not (see engine/data/COMPATIBILITY.md):

- periods not followed by a digit are deleted, not replaced by a space, so dotted abbreviations
  stay one word (``U.S.A.`` -> ``usa``, ``10 a.m.`` -> ``10 am``), as in the VQA normaliser;
- a decimal point is kept, and a leading one gets its zero (``.5`` -> ``0.5``; the VQA
  normaliser keeps ``.5``, which then never equals ``0.5``);
- thousands separators go (``1,000`` -> ``1000``);
- apostrophes are dropped (``don't`` -> ``dont``) where the VQA normaliser instead restores
  them on a fixed list of contractions: either way both spellings compare equal;
- every other punctuation mark becomes a space (the VQA normaliser deletes it instead when the
  text has the mark next to a space anywhere, so ``black-and-white`` may become one word);
- number words ``zero`` .. ``twenty`` become digits, and ``none`` becomes ``0`` (the VQA
  normaliser maps only ``none`` .. ``ten``);
- the articles a, an and the are dropped, unless the answer is nothing but articles (``A`` as
  the name of an option letter stays ``a``; the VQA normaliser would reduce it to nothing).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_NAMES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
NUMBER_WORDS: dict[str, str] = {word: str(i) for i, word in enumerate(_NUMBER_NAMES.split(" "))}
NUMBER_WORDS["none"] = "0"
RELAXED_TOLERANCE = 0.05  # ChartQA: a number within 5% of the gold is right
ANLS_THRESHOLD = 0.5  # DocVQA: a similarity under 0.5 scores 0

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")
_LEADING_POINT = re.compile(r"(?:(?<=\s)|^)\.(?=\d)")
_STRAY_POINT = re.compile(r"(?<!\d)\.")
_OTHER_PUNCTUATION = re.compile(r"[^\w\s.]|_")


def normalize_answer(text: str) -> str:
    """Return ``text`` normalised for exact-match comparison (rules in the module docstring)."""
    text = text.lower().replace("\u2019", "'")
    text = _THOUSANDS.sub("", text)
    text = _PERIOD_NOT_DECIMAL.sub("", text)
    text = _LEADING_POINT.sub("0.", text)
    text = text.replace("'", "")
    text = _STRAY_POINT.sub(" ", text)
    text = _OTHER_PUNCTUATION.sub(" ", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    kept = [w for w in words if w not in ARTICLES]
    # An answer made only of articles ("A", "The A") is itself a word, e.g. an option letter:
    # keep its last word rather than an empty string or the leading article.
    return " ".join(kept if kept else words[-1:])


def parse_number(text: str) -> float | None:
    """Return the number ``text`` spells (``1,234``, ``45%``, ``$3.5``, ``-2``), else None."""
    cleaned = _THOUSANDS.sub("", text.strip().rstrip(".").strip())
    cleaned = cleaned.removeprefix("$").removesuffix("%").strip()
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def relaxed_match(prediction: str, gold: str) -> bool:
    """Return ChartQA's relaxed correctness of ``prediction`` for one ``gold`` answer.

    Numbers: within 5% of the gold (exactly equal when the gold is 0). Text: equal after
    :func:`normalize_answer`.
    """
    predicted, target = parse_number(prediction), parse_number(gold)
    if predicted is not None and target is not None:
        if target == 0:
            return predicted == 0
        return abs(predicted - target) / abs(target) <= RELAXED_TOLERANCE
    return normalize_answer(prediction) == normalize_answer(gold)


def levenshtein(a: str, b: str) -> int:
    """Return the edit distance between ``a`` and ``b`` (insertions, deletions, substitutions)."""
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, start=1):
        current = [j]
        for i, ca in enumerate(a, start=1):
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, golds: Sequence[str]) -> float:
    """Return ANLS: the best 1 - normalised edit distance over ``golds``, 0 under the threshold.

    Both sides are lowercased and their whitespace collapsed, as in the DocVQA evaluation.
    """
    predicted = " ".join(prediction.strip().lower().split())
    best = 0.0
    for gold in golds:
        target = " ".join(gold.strip().lower().split())
        longest = max(len(target), len(predicted))
        similarity = 1.0 if longest == 0 else 1.0 - levenshtein(target, predicted) / longest
        best = max(best, similarity)
    return best if best >= ANLS_THRESHOLD else 0.0
