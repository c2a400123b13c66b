"""Read the answer a model's reply gives: an option letter, or yes/no.

Multiple choice, :func:`extract_choice`: ranked rules, the first that yields a letter wins.

1. **Bare**: the whole reply is one letter, possibly decorated: ``B``, ``b``, ``(B)``, ``B.``,
   ``**B**``.
2. **Announced**: ``The answer is B``, ``The answer is: B``, ``Answer: (B)``, ``Choice: C``,
   ``The correct option is C``, ``B is correct``, ``B. dog - correct``, ``I choose D``,
   ``I would go with C``, ``\\boxed{B}``. A lowercase letter counts only where no word follows
   it (``the answer is b``, not ``the answer is a cat``); an ``A`` followed by the words of an
   option (``The answer is A dog``) reads as that option. When a reply announces several
   letters, the last announcement wins (a corrected answer); an announcement of several letters
   at once (``The answer is A and C``) gives no answer.
3. **Parenthesised**: exactly one distinct in-range letter in parentheses: ``... so (B).``
4. **Leading**: a letter opening the reply followed by ``.``, ``)`` or ``:``: ``B. yellow``.
5. **Mentioned**: exactly one distinct letter after the word option or choice: ``option D``.
6. **Option text**: the reply normalises to exactly one option's text, or contains exactly one
   option's text as whole words (an option inside a longer contained one, ``blue`` inside
   ``light blue``, does not count).

Letters must be within the example's options; where a rule finds two letters that tie, it
yields nothing and the next rule is tried.

Yes/no, :func:`normalize_yes_no`: a reply that is just ``Y`` or ``N``; else an announced
``answer is yes/no``; a reply that says both as stand-alone answers (``yes/no``, ``Yes.\\nNo.``,
``No, yes.``) gives no answer; else the reply's opening (yes, yeah, yep, true, correct / no,
nope, false, incorrect, not really, not at all, definitely not, ...), unless a stand-alone
answer later contradicts it; else the only one of the words yes/no the reply contains.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from priorscope.engine.data.example import OPTION_LABELS
from priorscope.engine.data.normalize import normalize_answer

YES_WORDS = frozenset({"yes", "yeah", "yep", "true", "correct"})
NO_WORDS = frozenset({"no", "nope", "false", "incorrect"})
NO_PHRASES = (
    "not really",
    "not at all",
    "absolutely not",
    "definitely not",
    "certainly not",
    "of course not",
    "not quite",
)

_BARE = re.compile(r"[\s(\[*'\"]*([A-Za-z])[\s)\].:*'\"]*")
_PAREN = re.compile(r"\(([A-Z])\)")
_LEADING = re.compile(r"\s*\**([A-Z])\**[.):]")
_MENTIONED = re.compile(r"(?i:\b(?:option|choice))\s*[(\[*]*\s*([A-Z])(?![A-Za-z0-9])")
# The letter of an announcement, with its decorations: (B), [B], **B**.
_LETTER = r"[(\[*]*\s*([A-Za-z])(?![A-Za-z0-9])[)\]*]*"
_ANNOUNCEMENTS = (
    re.compile(
        r"(?i:\b(?:final\s+|correct\s+|right\s+|best\s+)?(?:answer|option|choice)\s*"
        r"(?:(?:is|would\s+be|should\s+be|will\s+be)\s*:?|:)\s*(?:option\s*|choice\s*)?)" + _LETTER
    ),
    re.compile(
        r"(?i:\bI(?:\s+would|\s+will|'d|'ll)?\s+(?:choose|pick|select|go\s+with|opt\s+for)\s*"
        r"(?:option\s*|choice\s*|answer\s*)?)" + _LETTER
    ),
    re.compile(r"\\boxed\{\s*(?:\\text\{\s*)?([A-Za-z])\s*\}"),
    re.compile(
        r"\b([A-Z])\)?\s*(?i:is\s+(?:the\s+)?(?:correct|right)(?:\s+(?:answer|option|choice))?)\b"
    ),
    re.compile(
        r"(?:^|[\n;]|\.\s)\s*\**\(?([A-Z])\)?\**[.):]\s+[^.\n]*?[-\u2013\u2014:,(]\s*"
        r"(?i:correct)\b"
    ),
)
# "B, C", "A and C", "(A) or (B)": a letter that is itself followed by no word.
_MORE_LETTERS = re.compile(
    r"[)\]*]*\s*(?:,|and|or|&|/|\+)\s*[(\[*]*([A-Z])[)\]*]*"
    r"(?=\s*(?:$|[.,;:!?}\n/&+]|(?:and|or)\s))"
)
_FOLLOWING_WORD = re.compile(r"[)\]*]*\s*(?:$|[.,;:!?)\]}\n])")


def extract_choice(text: str, options: Sequence[str]) -> str | None:
    """Return the option letter the reply ``text`` picks, or None (rules in the module doc)."""
    labels = OPTION_LABELS[: len(options)]
    bare = _BARE.fullmatch(text)
    if bare and bare.group(1).upper() in labels:
        return bare.group(1).upper()
    announced = _announced(text, options, labels)
    if announced is not None:
        return announced or None
    in_parens = {x for x in _PAREN.findall(text) if x in labels}
    if len(in_parens) == 1:
        return in_parens.pop()
    leading = _LEADING.match(text)
    if leading and leading.group(1) in labels:
        return leading.group(1)
    mentioned = {x for x in _MENTIONED.findall(text) if x in labels}
    if len(mentioned) == 1:
        return mentioned.pop()
    return _match_option_text(text, options, labels)


def _announced(text: str, options: Sequence[str], labels: str) -> str | None:
    """Return the last announced letter, '' for an announcement of several, None for none."""
    found: list[tuple[int, str]] = []
    for pattern in _ANNOUNCEMENTS:
        for match in pattern.finditer(text):
            letter = _announced_letter(text, match, options, labels)
            if letter is not None:
                found.append((match.start(1), letter))
    if not found:
        return None
    return max(found)[1]


def _announced_letter(
    text: str, match: re.Match[str], options: Sequence[str], labels: str
) -> str | None:
    letter, rest = match.group(1), text[match.end(1) :]
    if letter.islower() and not _FOLLOWING_WORD.match(rest):
        return None  # "the answer is a cat": an article, not option A
    if letter.upper() not in labels:
        return None
    if _MORE_LETTERS.match(rest):
        return ""  # "A and C": several letters for a single choice
    if letter == "A" and re.match(r"[)\]*]*\s+[a-z]", rest):
        following = normalize_answer(rest.split("\n", 1)[0])
        named = [
            labels[i]
            for i, o in enumerate(options)
            if (n := normalize_answer(o)) and (following == n or following.startswith(n + " "))
        ]
        if len(named) == 1:
            return named[0]  # "The answer is A dog": the article and option text of "dog"
    return letter.upper()


def _match_option_text(text: str, options: Sequence[str], labels: str) -> str | None:
    reply = normalize_answer(text)
    if not reply:
        return None
    normalised = [normalize_answer(o) for o in options]
    exact = {labels[i] for i, o in enumerate(normalised) if o and o == reply}
    if len(exact) == 1:
        return exact.pop()
    padded = f" {reply} "
    contained = [o for o in normalised if o and f" {o} " in padded]
    # "It is light blue" names "light blue", not also "blue": drop phrases inside a longer one.
    longest = {o for o in contained if not any(o != p and f" {o} " in f" {p} " for p in contained)}
    letters = {labels[i] for i, o in enumerate(normalised) if o in longest}
    return letters.pop() if len(letters) == 1 else None


_CLAUSES = re.compile(r"[\n.,;:!?/()\[\]\"*]|\bor\b|\band\b|\bbut\b")
_ANNOUNCED_YES_NO = re.compile(r"\banswer\s*(?:is|would\s+be)?\s*:?\s*\**\s*(yes|no)\b")


def _verdict(words: list[str]) -> str | None:
    phrase = " ".join(words)
    if any(phrase == p or phrase.startswith(p + " ") for p in NO_PHRASES):
        return "no"
    if words and words[0] in YES_WORDS:
        return "yes"
    if words and words[0] in NO_WORDS:
        return "no"
    return None


def normalize_yes_no(text: str) -> str | None:
    """Return 'yes' or 'no' for a reply that says so, None when it says neither or both."""
    low = text.strip().lower().replace("\u2019", "'")
    if re.fullmatch(r"[\W_]*y[\W_]*", low):
        return "yes"
    if re.fullmatch(r"[\W_]*n[\W_]*", low):
        return "no"
    announced = set(_ANNOUNCED_YES_NO.findall(low))
    if announced:
        return announced.pop() if len(announced) == 1 else None
    bare = set()
    for clause in _CLAUSES.split(low):
        words = re.sub(r"[^\w\s']", " ", clause).split()
        if len(words) == 1 or " ".join(words) in NO_PHRASES:
            verdict = _verdict(words)
            if verdict:
                bare.add(verdict)
    if len(bare) > 1:
        return None
    words = normalize_answer(text).split()
    lead = _verdict(words)
    if lead:
        return lead if not bare or bare == {lead} else None
    said = {w for w in words if w in ("yes", "no")}
    if bare:
        return next(iter(bare)) if said <= bare else None
    return said.pop() if len(said) == 1 else None
