"""Answer scoring: letter extraction, yes/no, normalised exact match, VQA soft accuracy."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from priorscope.engine.data import Example
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
