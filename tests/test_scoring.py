"""Answer scoring: letter extraction, yes/no, normalised exact match, VQA soft accuracy."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from priorscope.engine.data import Example
from priorscope.engine.data.normalize import anls, levenshtein, relaxed_match
from priorscope.engine.data.scoring import (
    NUMBER_WORDS,
    answer_vocabulary,
    candidates,
    extract_choice,
    normalize_answer,
    normalize_yes_no,
    score,
    soft_accuracy,
)
from priorscope.engine.errors import UsageError

OPTIONS = ("red", "yellow", "dark green", "blue")
MC = Example(id="m", question="what color?", answers=("C",), options=OPTIONS)
words = st.text(alphabet=string.ascii_letters, min_size=1, max_size=8)
replies = st.text(max_size=60)


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("C", "C"),
        ("c", "C"),
        (" (C) ", "C"),
        ("C.", "C"),
        ("**C**", "C"),
        ("I would say (C), dark green.", "C"),
        ("C) dark green", "C"),
        ("D: blue", "D"),
        ("The answer is B", "B"),
        ("answer: A", "A"),
        ("I pick option D.", "D"),
        ("dark green", "C"),
        ("It looks Dark Green to me", "C"),
        ("E", None),  # out of range for four options
        ("(A) or (B)", None),  # two letters tie
        ("red or blue", None),  # two option texts tie
        ("no idea", None),
        ("", None),
    ],
)
def test_choice_extraction_patterns(reply, letter):
    assert extract_choice(reply, OPTIONS) == letter
    result = score(MC, reply)
    assert result.extracted == (letter is not None)
    assert result.score == float(letter == "C")


def test_pattern_rank_bare_letter_beats_option_text():
    # "B" is bare and wins even though "blue"-like words could match option text.
    assert extract_choice("B", ("B", "A")) == "B"
    # the parenthesised letter outranks an option text named in the same reply
    assert extract_choice("blue is wrong, it is (C)", OPTIONS) == "C"


@given(st.integers(0, 3), st.sampled_from(["{}", "({})", "{}.", "The answer is {}.", "Answer: {}"]))
def test_every_decorated_letter_is_found(index, pattern):
    label = "ABCD"[index]
    assert extract_choice(pattern.format(label), OPTIONS) == label


@given(replies)
def test_scores_stay_in_unit_interval_and_extraction_is_consistent(reply):
    for example in (
        MC,
        Example(id="y", question="q", answers=("yes",)),
        Example(id="o", question="q", answers=("2",)),
        Example(id="v", question="q", answers=("2",) * 4 + ("3",) * 6),
    ):
        result = score(example, reply)
        assert 0.0 <= result.score <= 1.0
        assert result.extracted == (result.answer is not None)
        if not result.extracted:
            assert result.score == 0.0


@given(st.text(alphabet=string.printable, max_size=40))
def test_normalize_is_idempotent(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@given(
    st.lists(words, min_size=1, max_size=4),
    st.sampled_from(["", "The ", "a ", "An "]),
    st.sampled_from(["", ".", "!", "?", " ."]),
)
def test_normalize_ignores_case_articles_and_punctuation(parts, article, mark):
    plain = " ".join(parts)
    assert normalize_answer(f"{article}{plain.upper()}{mark}") == normalize_answer(plain.lower())


@given(st.sampled_from(sorted(NUMBER_WORDS)))
def test_number_words_equal_digits(word):
    example = Example(id="n", question="how many?", answers=(NUMBER_WORDS[word],))
    assert score(example, word.capitalize() + ".").score == 1.0
    assert score(example, str(int(NUMBER_WORDS[word]) + 1)).score == 0.0


@given(
    st.sampled_from(["yes", "Yes.", "yeah", "YES, it is", "True", "correct", "it is yes"]),
    st.booleans(),
)
def test_yes_no_normalisation(reply, gold_yes):
    assert normalize_yes_no(reply) == "yes"
    example = Example(id="y", question="q", answers=("yes" if gold_yes else "no",))
    assert score(example, reply).score == float(gold_yes)
    flipped = reply.lower().replace("yes", "no").replace("yeah", "nope").replace("true", "false")
    flipped = flipped.replace("correct", "incorrect")
    assert normalize_yes_no(flipped) == "no"


def test_yes_no_says_neither_or_both():
    assert normalize_yes_no("maybe") is None
    assert normalize_yes_no("it is yes and no") is None
    assert score(Example(id="y", question="q", answers=("no",)), "perhaps").extracted is False


@given(st.integers(2, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_soft_accuracy_matches_closed_form(n_and_k):
    n, k = n_and_k
    golds = ["cat"] * k + ["dog"] * (n - k)
    # k leave-one-out subsets lose a match, n - k keep all k of them.
    expected = (k * min(1.0, (k - 1) / 3) + (n - k) * min(1.0, k / 3)) / n
    assert soft_accuracy("cat", golds) == pytest.approx(expected)
    assert soft_accuracy("cat", golds[::-1]) == pytest.approx(expected)


def test_soft_accuracy_known_points_and_normalisation():
    golds = ("Two",) * 3 + ("3",) * 7
    example = Example(id="v", question="how many?", answers=golds)
    assert score(example, "2").score == pytest.approx(0.9)
    assert score(example, "three").score == 1.0
    assert score(example, "four").score == 0.0
    # two golds, one match: the subset without it scores 0, the other 1/3
    two = Example(id="w", question="q", answers=("dog", "cat"))
    assert score(two, "cat").score == pytest.approx(1 / 6)


def test_open_answer_prefix_is_stripped():
    example = Example(id="o", question="q", answers=("yellow",))
    assert score(example, "The answer is: Yellow.").score == 1.0
    assert score(example, "The banana is yellow").score == 0.0


def test_answer_vocabulary_and_candidates():
    examples = [
        Example(id="1", question="q", answers=("Two",)),
        Example(id="2", question="q", answers=("2",)),
        Example(id="3", question="q", answers=("2",)),
        Example(id="4", question="q", answers=("red", "red", "blue")),
        Example(id="5", question="q", answers=("B",), options=("x", "y")),
    ]
    vocabulary = answer_vocabulary(examples)
    assert vocabulary == ("2", "red")
    assert candidates(examples[4]) == ("A", "B")
    assert candidates(Example(id="6", question="q", answers=("No",))) == ("yes", "no")
    assert candidates(examples[0], vocabulary) == vocabulary
    with pytest.raises(UsageError, match="answer_vocabulary"):
        candidates(examples[0])
    with pytest.raises(UsageError, match="gold answer"):
        score(Example(id="7", question="q", answers=()), "x")


# -- issue 16, defect 3: an explicit announcement outranks other letters ----------------------
ANIMALS = ("cat", "dog", "bird", "fish")


@pytest.mark.parametrize(
    "reply",
    [
        "The answer is B. Option (A) is a cat.",
        "A. cat - incorrect. B. dog - correct.",
        "A cat would have pointed ears. So the correct choice is B.",
        "Option A shows a cat, which is wrong. The answer is B.",
        "Answer: A is incorrect, the answer is B",
    ],
)
def test_announcement_outranks_parenthesised_and_leading_letters(reply):
    assert extract_choice(reply, ANIMALS) == "B"


# -- defect 4: announcements that were not recognised -----------------------------------------
@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("The answer is: B", "B"),
        ("Choice: C", "C"),
        ("The correct option is C.", "C"),
        ("B is correct.", "B"),
        ("the answer is b", "B"),
        ("I choose D.", "D"),
        ("I would go with C.", "C"),
        ("\\boxed{B}", "B"),
        ("$\\boxed{\\text{C}}$", "C"),
        ("Final answer: **D**", "D"),
        ("The answer is a cat.", "A"),  # the article, then option A's text
        ("The answer is A dog.", "B"),  # "A dog" names option B, not option A
        ("The answer is A and C.", None),  # several letters for one choice
        ("the answer is e", None),  # out of range
    ],
)
def test_announcement_forms(reply, letter):
    assert extract_choice(reply, ANIMALS) == letter


@given(
    st.integers(0, 3),
    st.sampled_from(
        [
            "The answer is {}",
            "the answer is {}.",
            "Answer: ({})",
            "The correct option is {}.",
            "{} is correct",
            "I choose {}",
            "\\boxed{{{}}}",
            "Looking closely, the animal has fins (see A? no). So the answer is {}.",
        ]
    ),
    st.booleans(),
)
def test_announced_letter_wins_in_any_form(index, pattern, lower):
    letter = "ABCD"[index]
    text = pattern.format(letter.lower() if lower and "{} is" not in pattern else letter)
    assert extract_choice(text, ANIMALS) == letter


@given(replies, st.integers(1, 6))
def test_extracted_letter_is_always_in_range(reply, n):
    letter = extract_choice(reply, tuple(f"option {i}" for i in range(n)))
    assert letter is None or letter in "ABCDEF"[:n]


def test_option_inside_a_longer_option_does_not_tie():
    options = ("red", "dark red", "blue")
    assert extract_choice("It is dark red.", options) == "B"
    assert extract_choice("It is red.", options) == "A"


# -- defect 5: open-answer normalisation -------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("U.S.A.", "usa"),
        ("10 a.m.", "10 am"),
        ("none", "0"),
        (".5", "0.5"),
        ("0.5", "0.5"),
        ("5.", "5"),
        ("3.14", "3.14"),
        ("1,000", "1000"),
        ("A", "a"),  # nothing but an article: kept
        ("The", "the"),
        ("Twenty", "20"),
    ],
)
def test_vqa_normalisation_points(text, normal):
    assert normalize_answer(text) == normal


def test_leading_decimal_point_is_not_an_integer():
    assert normalize_answer(".5") != normalize_answer("5")
    example = Example(id="d", question="q", answers=("0.5",))
    assert score(example, ".5").score == 1.0 and score(example, "5").score == 0.0
    assert score(Example(id="u", question="q", answers=("usa",)), "U.S.A.").score == 1.0
    assert score(Example(id="n", question="q", answers=("0",)), "None").score == 1.0


@given(st.text(alphabet=string.ascii_letters + string.digits + " .,'-", max_size=30))
def test_normalize_output_has_no_stray_periods(text):
    # A period survives only as a decimal point, between two digits.
    assert not re.search(r"(?<!\d)\.|\.(?!\d)", normalize_answer(text))


# -- defect 6: yes/no ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "said"),
    [
        ("yes/no", None),
        ("Yes.\nNo.", None),
        ("No, yes.", None),
        ("Yes or no", None),
        ("Not really", "no"),
        ("Not really.", "no"),
        ("Not at all", "no"),
        ("Y", "yes"),
        ("N", "no"),
        ("n.", "no"),
        ("Yes, there is no dog in the picture.", "yes"),
        ("No, there is no dog.", "no"),
        ("The answer is no.", "no"),
        ("There is no dog.", "no"),
    ],
)
def test_yes_no_contradictions_and_short_forms(reply, said):
    assert normalize_yes_no(reply) == said
    example = Example(id="y", question="q", answers=("no",))
    assert score(example, reply).extracted == (said is not None)


@given(
    st.sampled_from(["yes", "Yes", "YES", "yeah"]),
    st.sampled_from(["no", "No", "NO", "nope"]),
    st.sampled_from(["/", ".\n", ", ", " or ", "; ", "\n"]),
    st.booleans(),
)
def test_both_stand_alone_answers_give_none(yes, no, separator, yes_first):
    first, second = (yes, no) if yes_first else (no, yes)
    assert normalize_yes_no(f"{first}{separator}{second}") is None


# -- defect 10: relaxed accuracy and ANLS -------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "gold", "hit"),
    [
        ("45", "45", True),
        ("47", "45", True),  # 4.4% off
        ("47.26", "45", False),  # 5.02% off
        ("42.75", "45", True),  # exactly 5% under
        ("1,234", "1234", True),
        ("45.", "45", True),
        ("0", "0", True),
        ("0.1", "0", False),
        ("Brazil", "brazil", True),
        ("Brasil", "Brazil", False),
    ],
)
def test_relaxed_accuracy_points(prediction, gold, hit):
    assert relaxed_match(prediction, gold) is hit


@given(st.floats(1e-3, 1e6), st.floats(-0.2, 0.2))
def test_relaxed_accuracy_is_the_5_percent_rule(gold, change):
    prediction = gold * (1 + change)
    # Round trip through text with enough digits; the boundary itself is tested above.
    if abs(abs(change) - 0.05) > 1e-6:
        assert relaxed_match(repr(prediction), repr(gold)) is (abs(change) <= 0.05)


@pytest.mark.parametrize(
    ("prediction", "golds", "value"),
    [
        ("Paris", ("Paris",), 1.0),
        ("paris ", ("Paris",), 1.0),
        ("Pariss", ("Paris",), 5 / 6),
        ("London", ("Paris",), 0.0),  # under the 0.5 threshold
        ("John Smith", ("J. Smith", "John Smith"), 1.0),  # best gold
        ("ab", ("abcd",), 0.5),  # exactly at the threshold
    ],
)
def test_anls_points(prediction, golds, value):
    assert anls(prediction, golds) == pytest.approx(value, rel=1e-12)


short = st.text(alphabet="abc ", max_size=8)


@given(short, short, short)
def test_levenshtein_is_a_metric(a, b, c):
    assert levenshtein(a, b) == levenshtein(b, a)
    assert (levenshtein(a, b) == 0) == (a == b)
    assert levenshtein(a, c) <= levenshtein(a, b) + levenshtein(b, c)
    assert levenshtein(a, b) <= max(len(a), len(b))


@given(short, st.lists(short, min_size=1, max_size=3))
def test_anls_is_in_unit_interval_and_exact_is_one(prediction, golds):
    value = anls(prediction, golds)
    assert value == 0.0 or 0.5 <= value <= 1.0
    assert anls(golds[0], golds) == 1.0


def test_score_dispatches_on_the_example_metric():
    chart = Example(id="c", question="q", answers=("45",), metric="relaxed")
    assert score(chart, "The answer is 46.").score == 1.0
    assert score(chart, "").extracted is False
    doc = Example(id="d", question="q", answers=("ACME Corp",), metric="anls")
    result = score(doc, "ACME Corp.")
    assert (
        result.extracted
        and result.answer == "ACME Corp."
        and result.score == pytest.approx(1 - 1 / 10, rel=1e-12)
    )
    yes_no_chart = Example(id="y", question="q", answers=("Yes",), metric="relaxed")
    assert score(yes_no_chart, "yes").score == 1.0
