"""Compare priorscope's reading of a reply with VLMEvalKit's, one real-style case at a time.

What is compared, per kind: multiple choice, the extracted letter (no answer: VLMEvalKit's False
or 'Z', priorscope's None); yes/no, the extracted yes/no (VLMEvalKit's 'Unknown' is no answer);
VQA, relaxed accuracy and ANLS, the score.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

from real_style_outputs import Case

from priorscope.engine.data import scoring
from priorscope.engine.data import vlmevalkit as ref


@dataclass(frozen=True)
class Verdict:
    """priorscope's and VLMEvalKit's readings of one case and whether they agree."""

    case: Case
    ours: str
    theirs: str
    agree: bool
    same_score: bool  # both right or both wrong (what an accuracy depends on)


def _score_text(value: float) -> str:
    return f"{value:.4f}"


def judge(case: Case, scorer: str = "priorscope") -> Verdict:
    """Return the Verdict of one case, read by ``scoring.score`` with ``scorer``."""
    ex, reply = case.example, case.reply
    got = scoring.score(ex, reply, scorer)
    if case.kind == "multiple choice":
        ours = got.answer
        theirs = ref.choice_letter(reply, ex.options)
        hit = ex.answers[0]
        return Verdict(
            case, str(ours), str(theirs), ours == theirs, (ours == hit) == (theirs == hit)
        )
    if case.kind == "yes/no":
        said = got.answer
        found = ref.yorn_extraction(reply)
        other = None if found == "Unknown" else found.lower()
        hit = ex.answers[0]
        return Verdict(case, str(said), str(other), said == other, (said == hit) == (other == hit))
    value = got.score
    reference = {
        "vqa": ref.vqa_score,
        "relaxed": ref.relaxed_accuracy,
        "anls": ref.anls,
    }[case.kind](reply, ex.answers)
    same = math.isclose(value, reference, rel_tol=1e-9, abs_tol=1e-12)
    return Verdict(case, _score_text(value), _score_text(reference), same, same)


@dataclass
class Tally:
    """Agreement counts overall, by kind and by (kind, phrasing), with example disagreements."""

    n: int = 0
    agree: int = 0
    same_score: int = 0
    by_kind: Counter[str] | None = None
    by_kind_agree: Counter[str] | None = None
    by_class: Counter[tuple[str, str]] | None = None
    by_class_agree: Counter[tuple[str, str]] | None = None
    examples: dict[tuple[str, str], list[Verdict]] | None = None

    @property
    def rate(self) -> float:
        return self.agree / self.n if self.n else float("nan")

    @property
    def score_rate(self) -> float:
        return self.same_score / self.n if self.n else float("nan")


def tally(verdicts: list[Verdict], keep: int = 3) -> Tally:
    """Return the agreement counts of ``verdicts`` (``keep`` disagreements kept per class)."""
    t = Tally(0, 0, 0, Counter(), Counter(), Counter(), Counter(), defaultdict(list))
    assert t.by_kind is not None and t.by_kind_agree is not None and t.examples is not None
    assert t.by_class is not None and t.by_class_agree is not None
    for v in verdicts:
        key = (v.case.kind, v.case.phrasing)
        t.n += 1
        t.agree += v.agree
        t.same_score += v.same_score
        t.by_kind[v.case.kind] += 1
        t.by_kind_agree[v.case.kind] += v.agree
        t.by_class[key] += 1
        t.by_class_agree[key] += v.agree
        if not v.agree and len(t.examples[key]) < keep:
            t.examples[key].append(v)
    return t


# Every phrasing class where priorscope reads a reply differently from VLMEvalKit, and why.
# engine/data/COMPATIBILITY.md lists the same classes; tests/test_compat_agreement.py checks
# that no disagreement falls outside them.
DOCUMENTED_DIFFERENCES: dict[tuple[str, str], str] = {
    ("multiple choice", "lowercase bare letter"): (
        "VLMEvalKit matches upper-case letters only; a reply 'b' is option B."
    ),
    ("multiple choice", "lowercase announcement"): (
        "'the answer is b' announces B; VLMEvalKit ignores lower-case letters."
    ),
    ("multiple choice", "explanation naming another option"): (
        "VLMEvalKit needs exactly one letter in the whole reply; an explicit announcement "
        "outranks letters mentioned in the explanation (issue 16, defect 3)."
    ),
    ("multiple choice", "per-option verdicts"): (
        "'A. cat - incorrect. B. dog - correct.' marks B; VLMEvalKit sees two letters."
    ),
    ("multiple choice", "sentence opening with the article A"): (
        "VLMEvalKit reads the article 'A' as option A (its quantifier check is off unless "
        "VERBOSE is set); priorscope reads the option text the sentence names."
    ),
    ("multiple choice", "option text only"): (
        "VLMEvalKit matches option texts as substrings, so '12' matches options '1' and '12' "
        "and gives nothing; priorscope matches whole words and prefers the exact option."
    ),
    ("multiple choice", "option text in a sentence"): (
        "The same substring rule: 'It is light blue.' contains 'blue' and 'light blue'."
    ),
    ("yes/no", "Y/N"): "A reply of just 'Y' or 'N' answers yes or no; VLMEvalKit needs the word.",
    ("yes/no", "not really"): "'Not really' is no; VLMEvalKit finds neither word.",
    ("yes/no", "yes + explanation with 'no'"): (
        "'Yes, and there is no other dog' opens with yes; VLMEvalKit sees both words."
    ),
    ("vqa", "the answer is X"): (
        "priorscope drops a leading 'The answer is'; VLMEvalKit compares the whole sentence."
    ),
    ("vqa", "number word"): "Number words up to twenty become digits; VLMEvalKit stops at ten.",
    ("vqa", "leading decimal point"): "'.5' is 0.5; VLMEvalKit keeps '.5', unequal to '0.5'.",
    ("vqa", "percent sign"): "'%' is punctuation to priorscope; VLMEvalKit keeps it.",
    ("relaxed", "the answer is X"): "A leading 'The answer is' is dropped before comparing.",
    ("relaxed", "final period"): (
        "A final period is dropped ('Brazil.' is Brazil); VLMEvalKit compares 'brazil.'."
    ),
    ("relaxed", "percent sign"): (
        "'45%' is the number 45 (ChartQA golds carry no unit); VLMEvalKit reads it as 0.45."
    ),
    ("relaxed", "thousands separator"): "'1,234' is 1234; VLMEvalKit cannot parse it as a number.",
    ("anls", "the answer is X"): "A leading 'The answer is' is dropped before the edit distance.",
}
