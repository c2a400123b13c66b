"""priorscope's scorer against a faithful re-implementation of VLMEvalKit's rule-based scoring.

First the reference itself, on behaviours VLMEvalKit is known for (so it is not a straw man);
then agreement on real-style replies: every disagreement must fall in a documented class of
tests/agreement.py (listed with its reason in engine/data/COMPATIBILITY.md), and every other
class must agree on every reply. The agreement rates themselves are measured by
benchmarks/scoring_agreement.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agreement import DOCUMENTED_DIFFERENCES, judge, tally
from real_style_outputs import KINDS, generate

from priorscope.engine.data import Example, scoring
from priorscope.engine.data import vlmevalkit as ref
from priorscope.engine.errors import UsageError

COMPATIBILITY = Path(__file__).resolve().parents[1] / "engine" / "data" / "COMPATIBILITY.md"
ABCD = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    ("reply", "found"),
    [
        ("B", "B"),
        ("(B) dog", "B"),
        ("The answer is B.", "B"),
        ("\\boxed{B}", "B"),  # braces become spaces
        ("b", False),  # lower case is never a letter
        ("A cat.", "A"),  # the article counts as option A
        ("A and C", False),  # two letters, and no option text
        ("It is a dog.", "B"),  # option text as a substring
        ("Cannot determine the answer", "Z"),
        ("I cannot tell.", False),
    ],
)
def test_reference_can_infer_behaves_like_vlmevalkit(reply, found):
    assert ref.can_infer(reply, ABCD) == found


def test_reference_normaliser_and_metrics_keep_their_quirks():
    assert ref.process_answer("U.S.A.") == "usa"
    assert ref.process_answer("black-and-white") == "black and white"
    assert ref.process_answer("black - white") == "black white"  # a spaced mark is deleted
    assert ref.process_answer("A dog") == "dog" and ref.process_answer("dont") == "don't"
    assert ref.process_answer("twelve") == "twelve" and ref.process_answer("none") == "0"
    assert ref.process_answer(".5") == ".5"
    assert ref.vqa_score("2", ["2"]) == 0.0  # leave-one-out over a single gold
    assert ref.vqa_score("2", ["2"] * 10) == 1.0
    assert ref.relaxed_accuracy("45%", ["45"]) == 0.0 and ref.relaxed_accuracy("46", ["45"]) == 1.0
    assert ref.anls("Pariss", ["Paris"]) == pytest.approx(5 / 6, rel=1e-12)
    # ChartQA: the change is relative to the reply (it is passed as the target), 0 is text
    assert ref.relaxed_accuracy("95.1", ["100"]) == 0.0  # 4.9 / 95.1 > 5%, though 4.9% of 100
    assert ref.relaxed_accuracy("0", ["0.0"]) == 0.0 and ref.relaxed_accuracy("0", ["0"]) == 1.0
    # ANLS divides by the lengths of the texts as given, spaces included
    assert ref.anls("Pariss  ", ["Paris"]) == pytest.approx(1 - 1 / 8, rel=1e-12)
    assert ref.yorn_extraction("Yes, there is no doubt.") == "Unknown"
    assert ref.yorn_extraction("No.") == "No"


@pytest.mark.parametrize("mix", ["realistic", "stress"])
def test_every_disagreement_is_a_documented_class(mix):
    result = tally([judge(case) for case in generate(3000, seed=11, mix=mix)], keep=1)
    assert result.by_class is not None and result.by_class_agree is not None
    assert result.examples is not None
    undocumented = {
        key: result.examples[key][0]
        for key, n in result.by_class.items()
        if result.by_class_agree[key] < n and key not in DOCUMENTED_DIFFERENCES
    }
    assert not undocumented, {k: (v.case.reply, v.ours, v.theirs) for k, v in undocumented.items()}


def test_documented_classes_exist_and_are_in_the_compatibility_file():
    text = COMPATIBILITY.read_text(encoding="utf-8")
    for kind, phrasing in DOCUMENTED_DIFFERENCES:
        assert phrasing in KINDS[kind][1], (kind, phrasing)
        assert f"{kind}: {phrasing}" in text, (kind, phrasing)


# -- the vlmevalkit scorer: VLMEvalKit's reading through scoring.score ------------------------
@pytest.mark.parametrize("mix", ["realistic", "stress"])
def test_vlmevalkit_scorer_agrees_with_the_reference_on_every_reply(mix):
    result = tally([judge(case, "vlmevalkit") for case in generate(3000, seed=12, mix=mix)])
    assert result.by_class is not None and result.examples is not None
    assert result.agree == result.n, {k: v[0].case.reply for k, v in result.examples.items()}
    # ... where priorscope's own scorer differs in the documented classes.
    ours = tally([judge(case) for case in generate(3000, seed=12, mix=mix)])
    assert ours.agree < ours.n


def _ex(answers, options=(), metric="vqa"):
    return Example(
        id="x", question="q", answers=tuple(answers), options=tuple(options), metric=metric
    )


@pytest.mark.parametrize(
    ("example", "reply", "want"),
    [
        # multiple choice: upper-case letters only, the article counts, one letter anywhere
        (_ex(["B"], ABCD.values()), "b", (None, 0.0, False)),
        (_ex(["B"], ABCD.values()), "A dog.", ("A", 0.0, True)),
        (_ex(["B"], ABCD.values()), "Not A. The answer is B.", (None, 0.0, False)),
        (_ex(["B"], ABCD.values()), "It is a dog", ("B", 1.0, True)),
        # yes/no: both words anywhere give Unknown, scored wrong
        (_ex(["yes"]), "Yes, and there is no other dog.", (None, 0.0, False)),
        (_ex(["Yes"]), "yes", ("yes", 1.0, True)),
        (_ex(["no"]), "Not really.", (None, 0.0, False)),
        # VQA with one gold: case-insensitive exact match of the stripped reply
        (_ex(["three"]), "3", ("3", 0.0, True)),
        (_ex(["Paris"]), " paris ", ("paris", 1.0, True)),
        (_ex(["Paris"]), "The answer is Paris.", ("answer is paris", 0.0, True)),
        # ten golds: vqa_score after VLMEvalKit's normaliser (number words up to ten)
        (_ex(["2"] * 10), "two", ("2", 1.0, True)),
        (_ex(["12"] * 10), "twelve", ("twelve", 0.0, True)),
        # ChartQA: a percent is a fraction; ANLS
        (_ex(["45"], metric="relaxed"), "45%", ("45%", 0.0, True)),
        (_ex(["45"], metric="relaxed"), "46", ("46", 1.0, True)),
        (_ex(["Paris"], metric="anls"), "Pariss", ("pariss", pytest.approx(5 / 6), True)),
    ],
)
def test_vlmevalkit_scorer_reads_replies_as_vlmevalkit_does(example, reply, want):
    got = scoring.score(example, reply, "vlmevalkit")
    assert (got.answer, got.score, got.extracted) == want


def test_vlmevalkit_normaliser_keeps_no_state():
    # VLMEvalKit's number-word map is made per call; one shared here must not grow.
    before = dict(ref.MANUAL_MAP)
    ref.process_answer("purple elephants dance")
    assert before == ref.MANUAL_MAP


def test_an_unknown_scorer_is_refused_by_name():
    with pytest.raises(UsageError, match="Expected scorer to be one of priorscope, vlmevalkit"):
        scoring.score(_ex(["a"]), "a", "lmms-eval")
    with pytest.raises(UsageError, match="--scorer"):
        scoring.check_scorer("VLMEvalKit")
