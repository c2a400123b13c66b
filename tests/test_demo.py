"""The demo end to end on the built-in organism, and the validity checks of the decay metrics.

The synthetic set is generated here with a seed and a prior rate (0.5) the organism never saw
(it trained at 0.8), so each check compares what the diagnostics measure with what the model card
and the planted truth predict for this set.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from importlib.resources import files
from typing import Any

import pytest

from priorscope.engine.demo import DemoConfig, run_demo

PRIOR_RATE = 0.5
Z = 1.96


def _card() -> dict[str, Any]:
    path = files("priorscope.engine.models.organism").joinpath("checkpoint", "metrics.json")
    return json.loads(path.read_text())


def _find(doc: Any, key: str) -> Any:
    """Return the first value stored under ``key`` anywhere in a nested JSON document."""
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        for value in doc.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _half_width(p: float, n: int) -> float:
    return Z * math.sqrt(max(p * (1 - p), 1e-12) / n)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(
        out=out, n=600, seed=424242, prior_rate=PRIOR_RATE, ladder=(0.02, 0.16), n_boot=200
    )
    return run_demo(cfg)


@pytest.mark.slow
def test_demo_writes_report_subset_and_truth_sentences(demo) -> None:
    assert demo.report.html.is_file() and demo.grounded.is_file()
    # The grounded subset of the captured store: header plus rows copied from the input.
    source = demo.dataset.read_text().splitlines()
    subset = demo.grounded.read_text().splitlines()
    assert subset[0] == source[0] and 0 < len(subset) - 1 < len(source) - 1
    assert set(subset[1:]) <= set(source[1:])
    assert (demo.dataset.parent / "demo_truth.json").is_file()
    text = " ".join(demo.sentences)
    assert f"planted prior rate {PRIOR_RATE:g}" in text and "control template" in text
    html = demo.report.html.read_text()
    assert demo.sentences[0].split(";")[0] in html
    # Strips re-create the dataset's images: every tile is embedded.
    assert html.count("data:image/png;base64,") >= 3 + 6 * 5


@pytest.mark.slow
def test_prior_template_blind_rate_matches_the_model_card(demo) -> None:
    card_rate = _find(_card(), "prior_total_canonical_rate")
    card_n = _find(_card(), "per_template")["prior"]["n"]
    prior, measured = demo.truth["prior"], demo.truth["templates"]["prior"]
    share = prior["measured_canonical_share"]  # the planted rate as realised in this set
    # The card predicts the canonical answer under total; blind-answerable also needs the
    # severe blur right, which can only lower the rate, so this is the card's upper estimate.
    predicted = card_rate * share
    # Binomial spread of this set plus the card's own sampling error, both at 95%.
    half = Z * math.sqrt(
        predicted * (1 - predicted) / prior["n"] + share**2 * card_rate * (1 - card_rate) / card_n
    )
    assert abs(measured["blind_answerable"] - predicted) <= half + 1e-9, (measured, predicted)


def _total_answers(demo, template: str) -> tuple[list[str], list[str]]:  # type: ignore[no-untyped-def]
    """Return (the answer extracted under total, first gold answer) of the template's rows."""
    from priorscope.engine import open_store

    store = open_store(demo.store)
    table = store.examples()
    extracted = store.outputs("answer")[:, store.condition_index("total")]
    rows = [i for i, t in enumerate(table.column("template")) if t == template]
    return [str(extracted[i]) for i in rows], [table.gold[i][0] for i in rows]


@pytest.mark.slow
def test_visual_templates_fall_to_an_image_free_guess_under_total(demo) -> None:
    clean, total = [], []
    for name in ("color", "count", "presence"):
        t = demo.truth["templates"][name]
        acc = t["accuracy"]["total"]
        # No better than the best image-free guess (always the set's majority answer)...
        majority = t["majority_rate"]
        assert acc <= majority + _half_width(majority, t["n"]), (name, acc, majority)
        # ...and what its own total answers score when they are independent of the gold: the
        # frequency in this set of each answer it gives. A constant guess scores exactly its
        # answer's share of the set (1/3 for counts only on average over sets).
        answers, gold = _total_answers(demo, name)
        assert len(answers) == t["n"]
        share = Counter(gold)
        independent = sum(share[a] for a in answers) / len(answers) ** 2
        assert abs(acc - independent) <= _half_width(independent, t["n"]), (name, acc, independent)
        clean.append(t["accuracy"]["clean"])
        total.append(acc)
    # Taken together the visual templates lose accuracy when the image goes: it was used.
    assert sum(clean) > sum(total)


@pytest.mark.slow
def test_control_template_stays_answerable_at_every_level(demo) -> None:
    t = demo.truth["templates"]["control"]
    clean = t["accuracy"]["clean"]
    assert clean >= 0.8
    for level in ("blur@0.02", "blur@0.16", "total"):
        assert abs(t["accuracy"][level] - clean) <= _half_width(clean, t["n"]), level


@pytest.mark.slow
def test_demo_shows_probes_lens_and_patching_next_to_the_card(demo) -> None:
    diag = demo.truth["diagnostics"]
    # Layer replacement on the colour items: the colour leaves the image tokens inside decoder
    # layer 0 and ends at the last position (the card's profile; image tokens at the input carry
    # the whole effect, none at the last layer, where the last token carries it all).
    patch = diag["patch"]
    assert patch["n"] >= 5 and patch["card"]["effect"]["image"][0] == 1.0
    layers, effect = patch["layers"], patch["effect"]
    assert layers[0] == "embed" and len(layers) == 5
    assert effect["image"][0] > 0.8 and abs(effect["image"][-1]) < 0.1
    assert effect["last"][-1] > 0.8 and abs(effect["last"][0]) < 0.1
    # Probes: the answer reaches the last position where the card says, and the probe trained on
    # clean reads far less under total obfuscation.
    last = diag["probes"]["sites"]["last"]
    assert last["first_layer_095"] == diag["probes"]["card"]["last"]["from_layer"]
    assert last["total"][-1] < last["clean"][-1] - 0.3
    text = " ".join(demo.sentences)
    assert "Probes (logistic, trained on clean)" in text and "(card 1.00)" in text
    html = demo.report.html.read_text()
    assert "Not computed" not in html and "Present but not drawn" not in html
    for section in ("Probes:", "Layer replacement:", "Logit lens:"):
        assert f"<h2>{section}" in html
    assert set(demo.timings) >= {"capture", "probes", "lens", "patch", "analyse"}
