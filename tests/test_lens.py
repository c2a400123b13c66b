"""The logit lens with no model, checked against the model's own norm and head; the targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from patch_support import assert_rows_close, organism_capture

from priorscope.engine.models.registry import load_model
from priorscope.engine.patch import lens, logit_lens
from priorscope.engine.patch.lens import NEVER, renormalise
from priorscope.engine.patch.schema import LENS_GROUP
from priorscope.engine.patch.targets import answer_targets, candidate_index, margins
from priorscope.engine.store import open_results, open_store


@pytest.fixture(scope="module")
def organism():
    return load_model("builtin:organism", dtype="float32")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, organism):
    path, _ = organism_capture(tmp_path_factory.mktemp("lens"), organism, full_seq=0)
    return open_store(path)


@pytest.fixture(scope="module")
def result(store):
    return logit_lens(store)


def test_last_layer_reproduces_the_stored_logprobs(store, result):
    assert result.check_error < 1e-5
    last = result.layers.index(3)
    stored = renormalise(store.outputs("cand_logprob"))  # over the candidates, like the lens
    g, p = result.targets.gold, result.targets.prior
    n = np.arange(len(g))
    for ci, cond in enumerate(result.conditions):
        s = stored[:, store.condition_index(cond)]
        ok = result.targets.defined
        np.testing.assert_allclose(
            result.gold_logprob[ok, ci, last], s[n, g][ok], rtol=1e-5, atol=1e-5 * np.abs(s).max()
        )
        np.testing.assert_allclose(
            result.prior_logprob[ok, ci, last], s[n, p][ok], rtol=1e-5, atol=1e-5 * np.abs(s).max()
        )
        np.testing.assert_array_equal(result.final[:, ci], s.argmax(axis=-1))


def test_every_layer_matches_the_models_norm_and_head(store, result, organism):
    """The lens without a model equals the model's final norm and LM head on the cached state."""
    cand_ids = organism.candidate_token_ids(store.candidates)
    hidden = store.hidden(reduction="last")  # [example, condition, layer, d]
    with torch.no_grad():
        logits = organism.lm_head()(organism.final_norm()(torch.from_numpy(hidden)))[..., cand_ids]
    want = torch.log_softmax(logits.double(), dim=-1).numpy()
    g = result.targets.gold
    gold = np.take_along_axis(want, np.maximum(g, 0)[:, None, None, None], axis=-1)[..., 0]
    ok = g >= 0
    assert_rows_close(result.gold_logprob[ok], gold[ok], rtol=1e-5)
    top = want.argmax(axis=-1)
    np.testing.assert_array_equal(result.top, top)
    assert len(np.unique(result.top)) > 1  # the layers disagree: a real lens, not a constant


def test_margins_and_leads_are_consistent(result):
    defined = result.targets.defined
    assert defined.any() and (~defined).any()
    assert np.isnan(result.margin[~defined]).all()
    np.testing.assert_allclose(
        result.margin[defined],
        result.gold_logprob[defined] - result.prior_logprob[defined],
        rtol=1e-5,
        atol=1e-6,
    )
    led = result.first_lead != NEVER
    assert led.all()  # the final answer leads at least at the last layer
    assert (result.first_lead <= result.settled).all()
    last = len(result.layers) - 1
    assert (result.top[..., last] == result.final).all()


def test_lens_writes_a_results_store(tmp_path: Path, store, result):
    out = tmp_path / "lens.zarr"
    again = lens(store, out=out)
    back = open_results(out, LENS_GROUP, mode="r")
    np.testing.assert_array_equal(back.read("margin"), again.margin)
    np.testing.assert_array_equal(back.read("first_lead"), result.first_lead)
    assert back.to_xarray()["margin"].dims == ("example", "condition", "layer")
    assert back.attrs["check_error"] == pytest.approx(result.check_error)


def test_candidate_index_and_targets():
    cands = ["A", "B", "C", "blue", "red", "3", "yes", "no"]
    assert candidate_index("B", cands, ("red", "blue")) == 1
    assert candidate_index("blue", cands, ("red", "blue")) == 1  # option text -> its letter
    assert candidate_index("Blue.", cands) == 3
    assert candidate_index("three", cands) == 5  # number words normalise to digits
    assert candidate_index("purple", cands) == -1
    t = answer_targets(
        gold=[("red",), ("blue",), ("3",), ("A",)],
        options=[(), (), (), ("yellow", "red")],
        metadata=[{"canonical": "blue"}, {"canonical": ""}, {}, {"canonical": "red"}],
        prior_answers=["red", "blue", "purple", "A"],
        candidates=cands,
    )
    np.testing.assert_array_equal(t.gold, [4, 3, 5, 0])
    # canonical wins; prior equal to gold has no margin; an answer off the axis has none.
    np.testing.assert_array_equal(t.prior, [3, -1, -1, 1])
    lp = np.log(np.full((4, 2, len(cands)), 1 / len(cands)))
    lp[0, :, 4] = np.log(0.5)
    m = margins(lp, t)
    assert m.shape == (4, 2)
    np.testing.assert_allclose(m[0], np.log(0.5 * len(cands)), rtol=1e-6)
    assert np.isnan(m[1:3]).all() and np.allclose(m[3], 0.0, atol=1e-6)
