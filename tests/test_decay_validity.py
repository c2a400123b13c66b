"""The decay metrics recover the planted truth of the synthetic benchmark from a known model.

The "model" here is an exact prior follower written down in the test: it reads the image while
any of it is left (clean and every blur level) and, under total obfuscation, answers the
canonical colour on prior items, the text answer on control items and a fixed guess on visual
items. Its expected metrics follow from the planted rates alone, so a wrong definition, a wrong
grouping or a planting error in the generator shows up here without the trained organism.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from store_support import synth_answer_store

from priorscope.engine.analysis.decay import DecayConfig, compute_decay
from priorscope.engine.data import Example, synth

PRIOR_RATE = 0.55  # not the organism's training rate (0.8): nothing here may depend on it
N = 1000
GUESS = {"color": "red", "count": "2", "presence": "yes"}


def _interval(p: float, n: int) -> float:
    return 1.96 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def examples():
    return synth.generate(synth.SynthConfig(n=N, seed=31337, size=32, prior_rate=PRIOR_RATE))


@pytest.fixture(scope="module")
def result(examples, tmp_path_factory: pytest.TempPathFactory):
    def answer_of(_: int, e: Example) -> list[str]:
        t, g = e.metadata["template"], e.answers[0]
        blind = e.metadata["canonical"] if t in ("prior", "control") else GUESS[t]
        return [g, g, g, blind]

    root = tmp_path_factory.mktemp("validity")
    store = synth_answer_store(
        root, examples, ladder=(0.02, 0.16), answer_of=answer_of, chunk_rows=128
    )
    return compute_decay(store, DecayConfig(by="category", n_boot=300))


def test_prior_template_blind_rate_recovers_the_planted_rate(result) -> None:
    g = result.group("synth", "prior")
    rate = float(g.values["blind_answerable"])
    assert abs(rate - PRIOR_RATE) <= _interval(PRIOR_RATE, g.n)
    # The bootstrap interval of the metric covers the planted rate as well.
    assert g.low["blind_answerable"] <= PRIOR_RATE <= g.high["blind_answerable"]
    assert float(g.values["visual_gain"]) == pytest.approx(1 - rate)


def test_visual_templates_are_at_chance_or_majority_under_total(result, examples) -> None:
    total = result.levels.total
    for name in GUESS:
        g = result.group("synth", name)
        acc = float(g.values["accuracy"][total])
        golds = [e.answers[0] for e in examples if e.metadata["template"] == name]
        assert acc == pytest.approx(golds.count(GUESS[name]) / len(golds)), name
        chance, majority = float(g.values["chance"]), float(g.values["majority_rate"])
        n_answers = len(set(golds))
        assert chance == pytest.approx(1 / n_answers)  # a uniform guess among the answers
        assert majority == pytest.approx(max(golds.count(a) for a in golds) / len(golds))
        near_uniform = abs(acc - chance) <= _interval(chance, g.n)
        assert acc <= majority and (near_uniform or abs(acc - majority) <= _interval(majority, g.n))
        # A constant guess is blind-answerable exactly where it hits: its share minus chance,
        # never more than the best constant guess (the majority answer) gains over chance.
        adjusted = float(g.values["blind_answerable_adjusted"])
        assert adjusted == pytest.approx(acc - chance)
        assert adjusted <= majority - chance + 1e-12
        assert float(g.values["accuracy"][result.levels.clean]) == 1.0


def test_control_template_is_answerable_at_every_level(result) -> None:
    g = result.group("synth", "control")
    np.testing.assert_array_equal(g.values["accuracy"], np.ones(4))
    assert float(g.values["strict_invariance"]) == 1.0
    assert float(g.values["blind_answerable"]) == 1.0
    # On the whole benchmark, the non-blind items are the ones needing the image.
    whole = result.group("synth")
    assert float(whole.values["accuracy_not_blind"]) == 1.0
    assert float(whole.values["inflation"]) == 0.0
