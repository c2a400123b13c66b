"""The project's own probes recover what was planted in builtin:bottleneck (issue 13).

The bottleneck's card (engine/models/organism/bottleneck/README.md) plants, by item group:

- ``suppressed``: the drawn colour of the object is at the answer position by the read-out
  layer and gone again at the last layer ("decodable then lost");
- ``not_retrieved``: the lone shape's colour is in the image tokens, at chance at the answer
  position of every layer, and answered at chance.

Each group is captured for real (capture -> store -> ``fit_probes``, logistic probes of the gold
answer, which is the drawn colour) on a held-out set and the probe curve is checked against the
planted layers. Layer replacement (``priorscope.engine.patch``, exact suffix replay between the
``clean`` and ``total`` runs) then checks the causal side: a used colour item's answer moves with
the image states it is given, a suppressed item's answer moves with none, at any layer or position.
Since no answer moves, flips cannot say where the colour is suppressed; the read-out of states
kept after a replacement does: the clean run's answer-position state, put into the run without
the image at the read-out layer, keeps the drawn colour decodable until a planted suppression
layer removes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from capture_support import capture_examples

from priorscope.engine.patch import PatchConfig, PatchResult, Readout, patch, readout
from priorscope.engine.patch.readout import localise_config
from priorscope.engine.probes import ProbeConfig, ProbeResult, fit_probes
from priorscope.engine.store import open_store
from priorscope.engine.training.organism import BOTTLENECK
from priorscope.engine.training.planted import PlantedEvalConfig, planted_sets

N = 320
PATCHED = 32
INJECTED = 240
SEED = 20261201  # neither training (1_000_003+) nor the card (7-9) uses it


def _probe(folder: Path, name: str, examples: list) -> ProbeResult:  # type: ignore[type-arg]
    store = capture_examples(
        folder, name, examples, "builtin:bottleneck", total=False, reductions=("last", "image_mean")
    )
    cfg = ProbeConfig(targets=("gold",), kinds="logistic", train=("clean",), test=("clean",))
    return fit_probes(store, cfg, str(folder / f"{name}.probes.zarr"))


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ProbeResult]:
    folder = tmp_path_factory.mktemp("bottleneck")
    sets = planted_sets(BOTTLENECK.plant, PlantedEvalConfig(n=N, seed=SEED))
    return {name: _probe(folder, name, items) for name, items in sets.items()}


def _capture_full(folder: Path, name: str, examples: list) -> Path:  # type: ignore[type-arg]
    return capture_examples(
        folder,
        name,
        examples,
        "builtin:bottleneck",
        full_seq=len(examples),
        full_seq_layers="all",
        batch_size=16,
    )


@pytest.fixture(scope="module")
def replaced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PatchResult]:
    """Return group -> exact layer replacement of 32 items, total->clean and clean->total."""
    from priorscope.engine.data.synth import SynthConfig, generate

    folder = tmp_path_factory.mktemp("bottleneck_patch")
    plant = BOTTLENECK.plant
    pool = planted_sets(plant, PlantedEvalConfig(n=60, seed=SEED + 1))["suppressed"]
    suppressed = [ex for ex in pool if ex.metadata["counter_prior"] == "1"][:PATCHED]
    colour = SynthConfig(
        n=4 * PATCHED,
        seed=SEED + 2,
        templates=("color",),
        suppressed=plant.suppressed,
        not_retrieved=plant.not_retrieved,
    )
    used = [ex for ex in generate(colour) if ex.metadata["planted"] == "used"][:PATCHED]
    assert len(suppressed) == len(used) == PATCHED
    out = {}
    for name, items in (("suppressed", suppressed), ("used", used)):
        store = _capture_full(folder, name, items)
        out[name] = patch(store, PatchConfig(source="total", target="clean"))
    return out


@pytest.fixture(scope="module")
def injected(tmp_path_factory: pytest.TempPathFactory) -> Readout:
    """Return the read-out of the drawn colour after the clean answer-position state is put into
    the run without the image at each layer (suppressed items, drawn colour uniform)."""
    folder = tmp_path_factory.mktemp("bottleneck_inject")
    items = planted_sets(BOTTLENECK.plant, PlantedEvalConfig(n=INJECTED, seed=SEED + 3))
    store = _capture_full(folder, "suppressed", items["suppressed"])
    return readout(open_store(store), patch(store, localise_config()), "gold")


def _flips(result: PatchResult, group: str, mode: str) -> np.ndarray:
    """Return the share of items whose answer flipped [direction, layer]."""
    g, m = result.groups.index(group), result.modes.index(mode)
    return (result.exact["flipped"][:, :, :, g, m] == 1).mean(axis=1)


def _curve(result: ProbeResult, reduction: str) -> dict[int, float]:
    acc = result.accuracy(target="gold", kind="logistic", train="clean", test="clean")
    curve = acc.sel(reduction=reduction)
    return {int(layer): float(curve.sel(layer=layer)) for layer in curve.layer.values}


@pytest.mark.slow
def test_suppressed_colour_is_decodable_then_lost(probed: dict[str, ProbeResult]) -> None:
    last = _curve(probed["suppressed"], "last")
    mid, final = BOTTLENECK.readout_layer, BOTTLENECK.arch.layers - 1
    assert last[mid] >= 0.85, last
    assert last[mid] - last[final] >= 0.3, last
    # Before the decoder has read the image the answer position knows nothing of it.
    assert last[-1] < 0.3, last
    assert probed["suppressed"].attrs["model_accuracy"]["clean"] < 0.3  # answers canonical


@pytest.mark.slow
def test_not_retrieved_colour_is_in_the_image_tokens_and_not_answered(
    probed: dict[str, ProbeResult],
) -> None:
    result = probed["not_retrieved"]
    ds = result.to_xarray().load().sel(target="gold", kind="logistic", train="clean", test="clean")
    chance = float(ds.chance.max())
    assert chance == pytest.approx(1 / 8, abs=0.03)
    se = np.sqrt(chance * (1 - chance) / N)
    last = _curve(result, "last")
    # The answer position never holds the colour: at chance before the decoder and after every
    # layer (within 3 standard errors of the better of chance and the majority rate).
    for layer, acc in last.items():
        floor = max(chance, float(ds.majority.sel(layer=layer, reduction="last")))
        assert acc <= floor + 3 * se, (layer, last)
    assert max(_curve(result, "image_mean").values()) >= 0.9
    assert abs(result.attrs["model_accuracy"]["clean"] - chance) <= 3 * se  # answered at chance


@pytest.mark.slow
def test_replacement_moves_used_answers_and_never_suppressed_ones(
    replaced: dict[str, PatchResult],
) -> None:
    used, suppressed = replaced["used"], replaced["suppressed"]
    embed, final = used.layers.index(-1), used.layers.index(BOTTLENECK.arch.layers - 1)
    # Used: the answer follows whichever image states it is given: the image tokens before the
    # decoder, or the answer position after it (both directions).
    assert (_flips(used, "image", "state")[:, embed] >= 0.8).all()
    assert (_flips(used, "last", "state")[:, final] >= 0.8).all()
    # Suppressed: the drawn colour that probes read at the read-out layer has no causal path to
    # the answer: no state or write of any layer, at any position, moves it in either direction.
    for group in suppressed.groups:
        for mode in suppressed.modes:
            assert _flips(suppressed, group, mode).max() <= 0.05, (group, mode)
    delta = np.abs(suppressed.exact["delta"])
    assert float(np.nanmax(delta.mean(axis=1))) < 0.5
    # The answer is the prior in both runs: the margin drawn - canonical is negative in each.
    assert (suppressed.exact["margin_target"] < 0).mean() >= 0.9


@pytest.mark.slow
def test_replacement_localises_the_suppression(injected: Readout) -> None:
    mid, final = BOTTLENECK.readout_layer, BOTTLENECK.arch.layers - 1
    first = min(BOTTLENECK.suppress_layers)
    curve = injected.curve("clean->total", "last", "state", mid)
    # Put into the run without the image, the retrieved colour is read where it was put...
    assert curve[mid] >= 0.9, curve
    # ...carried by the layers before the suppression ones...
    assert all(curve[v] >= 0.9 for v in range(mid, first)), curve
    # ...and removed by a planted suppression layer, without the image's help.
    assert injected.loss_layer("clean->total", "last", "state", mid) in BOTTLENECK.suppress_layers
    assert curve[mid] - curve[final] >= 0.3, curve
    # The unpatched runs agree: clean carries the colour to the read-out layer and loses it by
    # the last; the run without the image never had it at the end.
    kept = list(injected.kept_layers)
    clean, total = injected.unpatched["clean"], injected.unpatched["total"]
    assert clean[kept.index(mid)] >= 0.9 and clean[kept.index(final)] <= injected.majority + 0.15
    assert total[kept.index(final)] <= injected.majority + 0.15
