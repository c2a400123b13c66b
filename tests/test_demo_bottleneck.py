"""The demo on `builtin:bottleneck`: every diagnostic recovers the groups planted in training.

A held-out synthetic set (a seed and prior rate the organism never saw, the suppressed objects
drawn in a uniform colour) goes through the whole demo: capture, decay, probes, lens, layer
replacement, report; per planted group, the answers and the probes of the drawn colour must
show what was planted (see engine/models/organism/bottleneck/README.md).
"""

from __future__ import annotations

import math

import pytest

from priorscope.engine.demo import DemoConfig, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo_bottleneck")
    cfg = DemoConfig(
        out=out,
        n=600,
        seed=515151,
        prior_rate=0.5,
        ladder=(0.04,),
        n_boot=100,
        model="builtin:bottleneck",
        patch_examples=24,
    )
    return run_demo(cfg)


@pytest.mark.slow
def test_suppressed_items_are_decodable_then_lost_and_answered_canonical(demo) -> None:
    s = demo.truth["planted"]["suppressed"]
    assert s["n"] >= 40 and s["counter_prior_n"] >= 20
    assert s["counter_clean_canonical_rate"] >= 0.9
    last = s["probe"]["accuracy"]["last"]
    assert s["probe"]["layers"][-1] == "resid.7" and len(last) == 9
    # Decodable at a middle layer (>= 0.9), lost by the last layer (a drop of >= 0.3).
    assert max(last[1:6]) >= 0.9 and last[-1] <= max(last[1:6]) - 0.3


@pytest.mark.slow
def test_layer_replacement_places_the_suppression_in_a_planted_layer(demo) -> None:
    inj = demo.truth["planted"]["suppressed"]["injection"]
    assert inj["n"] >= 40 and inj["planted_layers"] == [6, 7]
    curve = inj["curve"]
    start = f"resid.{inj['from_layer']}"
    assert curve[start] >= 0.9
    assert inj["falls_at"] in inj["planted_layers"]
    assert curve[start] - curve["resid.7"] >= 0.3
    assert any("layer replacement on the suppressed items" in s for s in demo.sentences)


@pytest.mark.slow
def test_not_retrieved_items_stay_in_the_image_tokens_and_are_answered_at_chance(demo) -> None:
    nr = demo.truth["planted"]["not_retrieved"]
    n, chance = nr["n"], nr["chance"]
    half = 3 * math.sqrt(chance * (1 - chance) / n)
    assert abs(nr["clean_acc"] - chance) <= half + (nr["majority_rate"] - chance)
    assert max(nr["probe"]["accuracy"]["image_mean"]) >= 0.9
    # Before the decoder the answer position knows nothing of the shape's colour.
    assert nr["probe"]["accuracy"]["last"][0] <= chance + half + 0.05


@pytest.mark.slow
def test_used_items_follow_the_image(demo) -> None:
    u = demo.truth["planted"]["used"]
    assert u["clean_acc"] >= 0.95 and u["total_acc"] <= 0.6


@pytest.mark.slow
def test_demo_prints_each_planted_finding_and_draws_every_analysis(demo) -> None:
    text = " ".join(demo.sentences)
    for phrase in ("planted suppressed items", "planted not-retrieved items", "planted used"):
        assert phrase in text
    html = demo.report.html.read_text()
    assert "Not computed" not in html and "Present but not drawn" not in html
    assert all(f"<h2>{s}" in html for s in ("Probes:", "Layer replacement:", "Logit lens:"))
