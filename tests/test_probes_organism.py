"""Probes on the built-in organism, captured for real on a held-out synthetic colour set.

The organism's card (engine/models/organism/checkpoint/README.md) says the answer of a colour
question is linearly readable at the question's shape word from decoder layer 1 on (a binding
read-out trained it there) and that the model answers it right from a clean image (1.000). So:

- at ``text_mean`` (the text tokens, the shape word among them) the colour is decodable at
  clean from resid.1 on;
- at ``last`` it is decodable at the layer whose output the LM head reads (resid.3). Measured
  here, ``last`` at resid.0-2 holds only part of it (about 0.6): the last token gathers the
  answer in the final layer;
- probes trained at clean fall to the chance rate under total obfuscation at every layer.
  (Probes trained *and* tested under total sit a little above chance, about 0.15-0.2 against
  0.125: the mean colour of a total image still leans towards the shapes' colours, as the
  card warns.)
"""

from __future__ import annotations

import numpy as np
import pytest
from capture_support import capture_examples

from priorscope.engine.probes import ProbeConfig, ProbeResult, fit_probes

N = 320


@pytest.fixture(scope="module")
def organism_probes(tmp_path_factory: pytest.TempPathFactory) -> ProbeResult:
    from priorscope.engine.data.synth import SynthConfig, generate

    folder = tmp_path_factory.mktemp("organism")
    # 84 px: the organism's trained image size; a seed neither training nor the card used.
    examples = generate(SynthConfig(n=N, seed=20261130, size=84, templates=("color",)))
    store = capture_examples(folder, "colour", examples, reductions=("last", "text_mean"))
    cfg = ProbeConfig(
        targets=("gold",), kinds="logistic", train=("clean",), test=("clean", "total")
    )
    return fit_probes(store, cfg, str(folder / "colour.probes.zarr"))


@pytest.mark.slow
def test_colour_is_decodable_where_the_card_says(organism_probes: ProbeResult) -> None:
    acc = organism_probes.accuracy(target="gold", kind="logistic", train="clean", test="clean")
    assert float(acc.sel(layer=3, reduction="last")) >= 0.95
    for layer in (1, 2, 3):
        assert float(acc.sel(layer=layer, reduction="text_mean")) >= 0.95, layer
    # Before the decoder sees the question, the colour is not in the last token.
    assert float(acc.sel(layer=-1, reduction="last")) < 0.3


@pytest.mark.slow
def test_colour_falls_to_chance_under_total(organism_probes: ProbeResult) -> None:
    ds = (
        organism_probes.to_xarray()
        .load()
        .sel(target="gold", kind="logistic", train="clean", test="total")
    )
    chance = float(ds.chance.max())
    assert chance == pytest.approx(1 / 8)
    se = np.sqrt(chance * (1 - chance) / N)
    for red in ("last", "text_mean"):
        for layer in ds.layer.values:
            acc = float(ds.accuracy.sel(layer=layer, reduction=red))
            floor = max(chance, float(ds.majority.sel(layer=layer, reduction=red)))
            assert acc <= floor + 3 * se, (red, layer, acc)
    assert organism_probes.attrs["model_accuracy"]["clean"] >= 0.99
