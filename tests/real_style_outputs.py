"""Real-style model replies, with their examples, to compare priorscope's scorer with VLMEvalKit's.

Each phrasing class mirrors replies seen in public answer files of LLaVA-style models (bare
letters, ``B. dog``, ``The answer is B.``, option text only, explanations that end with an
announcement, lowercase letters, ``\\boxed{B}``, several letters, refusals; ``Yes``/``No`` with
and without an explanation; short VQA answers with case, punctuation, articles and number
words; ChartQA numbers; DocVQA strings with typos).

Two mixes: ``realistic`` weights the classes as a model prompted the VLMEvalKit way ("Answer
with the option's letter from the given choices directly.", "Answer the question using a single
word or phrase.") replies, most replies following the instruction; ``stress`` draws every class
equally often, so the rare classes where the two scorers differ weigh as much as the common ones.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from priorscope.engine.data import Example

OPTION_POOLS: tuple[tuple[str, ...], ...] = (
    ("cat", "dog", "bird", "fish", "horse", "cow"),
    ("red", "blue", "green", "yellow", "white", "black"),
    ("1", "2", "3", "4", "5", "6"),
    ("left", "right", "top", "bottom", "center"),
    ("apple", "banana", "orange", "grape", "pear"),
    ("dark green", "light blue", "bright red", "pale yellow"),
    (
        "The suitcase is on the book.",
        "The suitcase is beneath the cat.",
        "The cat is on the suitcase.",
        "The book is beneath the cat.",
    ),
    ("Sunny", "Rainy", "Snowy", "Cloudy"),
    ("1", "10", "11", "12"),  # AI2D-style numbers, one a substring of another
    ("red", "dark red", "blue", "light blue"),
)
OBJECTS = ("dog", "car", "person", "tree", "bicycle", "umbrella", "cup", "clock")
VQA_GOLDS = ("2", "3", "7", "red", "white", "tennis", "nike", "stop", "usa", "0.5", "50", "12")
NUMBER_NAMES = {"2": "two", "3": "three", "7": "seven", "12": "twelve", "0": "zero"}
CHART_GOLDS = ("45", "12.5", "1234", "0.37", "2019", "Yes", "No", "Brazil", "3")
DOC_GOLDS = ("Paris", "John Smith", "$1,250.00", "March 3, 1998", "ACME Corp", "42")

Reply = Callable[[random.Random, dict[str, str]], str]

# -- multiple choice --------------------------------------------------------------------------
MC: dict[str, tuple[float, Reply]] = {
    "bare letter": (70, lambda r, v: v["L"]),
    "letter + period": (6, lambda r, v: f"{v['L']}."),
    "letter + option text": (6, lambda r, v: f"{v['L']}. {v['T']}"),
    "letter) text": (1, lambda r, v: f"{v['L']}) {v['T']}"),
    "parenthesised letter": (2, lambda r, v: f"({v['L']})"),
    "parenthesised letter + text": (1, lambda r, v: f"({v['L']}) {v['T']}"),
    "bold letter": (1, lambda r, v: f"**{v['L']}**"),
    "the answer is X": (4, lambda r, v: f"The answer is {v['L']}."),
    "answer: X": (2, lambda r, v: f"Answer: {v['L']}"),
    "option text only": (3, lambda r, v: v["T"]),
    "option text in a sentence": (1, lambda r, v: f"It is {v['T']}."),
    "explanation, then announcement": (
        1,
        lambda r, v: (
            f"Looking at the image carefully, it shows {v['T']}. Therefore, the answer is {v['L']}."
        ),
    ),
    "explanation naming another option": (
        0.5,
        lambda r, v: (
            f"Option {v['L2']} ({v['T2']}) does not match what is shown, while the "
            f"image clearly shows {v['T']}. So the answer is {v['L']}."
        ),
    ),
    "lowercase bare letter": (0.5, lambda r, v: v["L"].lower()),
    "lowercase announcement": (0.25, lambda r, v: f"the answer is {v['L'].lower()}"),
    "boxed letter": (0.25, lambda r, v: f"\\boxed{{{v['L']}}}"),
    "several letters": (
        0.25,
        lambda r, v: r.choice([f"{v['L']}, {v['L2']}", f"{v['L']} and {v['L2']}"]),
    ),
    "refusal": (
        0.5,
        lambda r, v: r.choice(
            [
                "I'm sorry, I cannot determine the answer from this image.",
                "Cannot determine the answer from the image provided.",
                "The image is too blurry to tell.",
                "I can't tell.",
            ]
        ),
    ),
    "sentence opening with the article A": (
        0.5,
        lambda r, v: f"A {v['T'].lower().rstrip('.')} can be seen in the picture.",
    ),
    "I choose X": (
        0.25,
        lambda r, v: r.choice([f"I choose {v['L']}.", f"I would go with {v['L']}."]),
    ),
    "X is correct": (0.25, lambda r, v: f"{v['L']} is correct."),
    "per-option verdicts": (
        0.1,
        lambda r, v: f"{v['L2']}. {v['T2']} - incorrect. {v['L']}. {v['T']} - correct.",
    ),
}

# -- yes/no -----------------------------------------------------------------------------------
YES_NO: dict[str, tuple[float, Reply]] = {
    "bare yes/no": (88, lambda r, v: v["A"].capitalize()),
    "lowercase with period": (2, lambda r, v: f"{v['A']}."),
    "yes/no + explanation": (
        4,
        lambda r, v: (
            f"Yes, there is a {v['O']} in the image."
            if v["A"] == "yes"
            else f"No, there is no {v['O']} in the image."
        ),
    ),
    "the answer is yes/no": (1, lambda r, v: f"The answer is {v['A']}."),
    "there is no X": (1, lambda r, v: f"There is no {v['O']} in the image."),
    "hedge": (1, lambda r, v: r.choice(["I cannot tell from the image.", "It is unclear."])),
    "self-contradiction": (0.5, lambda r, v: r.choice(["yes/no", "Yes.\nNo.", "No, yes."])),
    "not really": (0.5, lambda r, v: "Not really."),
    "Y/N": (0.25, lambda r, v: v["A"][0].upper()),
    "yes + explanation with 'no'": (
        0.5,
        lambda r, v: f"Yes, and there is no other {v['O']} nearby.",
    ),
}

# -- open answers (VQA soft accuracy over 10 golds) -------------------------------------------
VQA: dict[str, tuple[float, Reply]] = {
    "exact": (60, lambda r, v: v["G"]),
    "case and final period": (12, lambda r, v: f"{v['G'].capitalize()}."),
    "article": (5, lambda r, v: f"{r.choice(['a', 'the'])} {v['G']}"),
    "wrong answer": (12, lambda r, v: v["W"]),
    "number word": (4, lambda r, v: NUMBER_NAMES.get(v["G"], v["G"])),
    "the answer is X": (3, lambda r, v: f"The answer is {v['G']}."),
    "dotted abbreviation": (1, lambda r, v: "U.S.A." if v["G"] == "usa" else v["G"].upper()),
    "leading decimal point": (0.5, lambda r, v: ".5" if v["G"] == "0.5" else v["G"]),
    "percent sign": (0.5, lambda r, v: f"{v['G']}%" if v["G"][0].isdigit() else v["G"]),
    "sentence": (2, lambda r, v: f"It is {v['G']}."),
}

# -- ChartQA relaxed accuracy -----------------------------------------------------------------
RELAXED: dict[str, tuple[float, Reply]] = {
    "exact": (60, lambda r, v: v["G"]),
    "number within 5%": (10, lambda r, v: _scaled(v["G"], 1.03)),
    "number off by 10%": (10, lambda r, v: _scaled(v["G"], 1.10)),
    "final period": (8, lambda r, v: f"{v['G']}."),
    "lowercase text": (5, lambda r, v: v["G"].lower()),
    "the answer is X": (3, lambda r, v: f"The answer is {v['G']}"),
    "thousands separator": (
        2,
        lambda r, v: f"{int(float(v['G'])):,}" if _number(v["G"]) else v["G"],
    ),
    "percent sign": (2, lambda r, v: f"{v['G']}%" if _number(v["G"]) else v["G"]),
}

# -- DocVQA ANLS ------------------------------------------------------------------------------
ANLS: dict[str, tuple[float, Reply]] = {
    "exact": (60, lambda r, v: v["G"]),
    "case": (10, lambda r, v: v["G"].upper()),
    "one typo": (10, lambda r, v: _typo(r, v["G"])),
    "final period": (8, lambda r, v: f"{v['G']}."),
    "wrong answer": (10, lambda r, v: v["W"]),
    "the answer is X": (2, lambda r, v: f"The answer is {v['G']}"),
}

KINDS: dict[str, tuple[float, dict[str, tuple[float, Reply]]]] = {
    "multiple choice": (40, MC),
    "yes/no": (25, YES_NO),
    "vqa": (25, VQA),
    "relaxed": (5, RELAXED),
    "anls": (5, ANLS),
}


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _scaled(gold: str, factor: float) -> str:
    if not _number(gold):
        return gold
    value = float(gold) * factor
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _typo(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text))
    return text[:i] + rng.choice(string.ascii_lowercase) + text[i + 1 :]


@dataclass(frozen=True)
class Case:
    """One reply to one example: the kind of question, the phrasing class, both."""

    kind: str
    phrasing: str
    example: Example
    reply: str


def _pick(rng: random.Random, table: dict[str, tuple[float, Reply]], mix: str) -> str:
    names = list(table)
    weights = [table[n][0] if mix == "realistic" else 1.0 for n in names]
    return rng.choices(names, weights)[0]


def _mc_case(rng: random.Random, i: int, phrasing: str) -> Case:
    pool = rng.choice(OPTION_POOLS)
    n = rng.choice((2, 3, 4, 4, 4, min(5, len(pool))))
    options = tuple(rng.sample(pool, n))
    gold, other = rng.sample(range(n), 2)
    v = {
        "L": string.ascii_uppercase[gold],
        "T": options[gold],
        "L2": string.ascii_uppercase[other],
        "T2": options[other],
    }
    example = Example(id=f"mc{i}", question="Which one?", answers=(v["L"],), options=options)
    return Case("multiple choice", phrasing, example, MC[phrasing][1](rng, v))


def _open_case(rng: random.Random, i: int, kind: str, phrasing: str) -> Case:
    if kind == "yes/no":
        answer = rng.choice(("yes", "no"))
        example = Example(id=f"yn{i}", question="Is there one?", answers=(answer,))
        v = {"A": answer, "O": rng.choice(OBJECTS)}
        return Case(kind, phrasing, example, YES_NO[phrasing][1](rng, v))
    pools = {"vqa": VQA_GOLDS, "relaxed": CHART_GOLDS, "anls": DOC_GOLDS}
    gold, wrong = rng.sample(pools[kind], 2)
    if kind == "vqa":  # ten annotators, most agreeing, as in VQA v2 and TextVQA
        k = rng.randint(3, 10)
        answers = (gold,) * k + tuple(rng.choice((wrong, gold.upper())) for _ in range(10 - k))
        metric = "vqa"
    else:
        answers, metric = (gold,), kind
    example = Example(id=f"o{i}", question="What?", answers=answers, metric=metric)
    table = {"vqa": VQA, "relaxed": RELAXED, "anls": ANLS}[kind]
    return Case(kind, phrasing, example, table[phrasing][1](rng, {"G": gold, "W": wrong}))


def generate(n: int, seed: int = 0, mix: str = "realistic") -> list[Case]:
    """Return ``n`` cases drawn with ``seed`` from the ``realistic`` or ``stress`` mix."""
    if mix not in ("realistic", "stress"):
        raise ValueError(f"Expected mix 'realistic' or 'stress'. Got {mix!r} instead.")
    rng = random.Random(seed)
    kinds = list(KINDS)
    cases = []
    for i in range(n):
        kind = rng.choices(kinds, [KINDS[k][0] for k in kinds])[0]
        phrasing = _pick(rng, KINDS[kind][1], mix)
        if kind == "multiple choice":
            cases.append(_mc_case(rng, i, phrasing))
        else:
            cases.append(_open_case(rng, i, kind, phrasing))
    return cases
