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
import vlmevalkit_reference as ref
from agreement import DOCUMENTED_DIFFERENCES, judge, tally
from real_style_outputs import KINDS, generate

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
