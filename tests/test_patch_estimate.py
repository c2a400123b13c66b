"""Capture-time margin gradients and first-order estimates, checked against exact replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from patch_support import assert_rows_close, organism_capture

from priorscope.engine.capture.gradients import example_gradients
from priorscope.engine.data import synth
from priorscope.engine.models.registry import load_model
from priorscope.engine.patch import PatchConfig, patch
from priorscope.engine.patch.estimate import MemoryGradients, compare
from priorscope.engine.patch.replay import (
    GROUPS,
    MODES,
    Patch,
    Replayer,
    ReplayInput,
    as_group,
    replay_patches,
)
from priorscope.engine.patch.run import _last_states, replay_input
from priorscope.engine.patch.targets import margins, store_targets
from priorscope.engine.store import open_store

SMALL = synth.SynthConfig(n=15, seed=5, size=84)


@pytest.fixture(scope="module")
def f64():
    # float64 weights: the gradient and difference checks then see no float32 round-off
    # except inside transformers' RMSNorm, which always computes in float32.
    return load_model("builtin:organism", dtype=torch.float64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    adapter = load_model("builtin:organism", dtype="float32")
    path, rows = organism_capture(
        tmp_path_factory.mktemp("est"), adapter, full_seq=8, synth_cfg=SMALL
    )
    store = open_store(path)
    examples = [rows[i] for i in store.examples().source_row]
    return store, examples


@pytest.fixture(scope="module")
def grads(setup, f64):
    store, examples = setup
    prior = [str(a) for a in store.outputs("answer")[:, store.condition_index("total")]]
    fs = store.fullseq(store.fullseq_examples()[0])
    last, full = example_gradients(
        f64,
        examples,
        store.conditions,
        store.candidates,
        prior,
        store.layers,
        fs.layers,
        store.fullseq_examples(),
        fs.conditions,
        batch_size=4,
    )
    return MemoryGradients(tuple(store.layers), last, full)


@pytest.fixture(scope="module")
def both(setup, f64, grads):
    store, _ = setup
    return patch(store, PatchConfig(method="both"), adapter=f64, gradients=grads)


def test_gradients_equal_autograd_through_the_decoder_suffix(setup, f64, grads):
    """Capture's gradients (full forward, hooks) against autograd through replay's own path."""
    store, _ = setup
    t = store_targets(store)
    e = next(i for i in store.fullseq_examples() if t.defined[i])
    inp = replay_input(store, e, "x", {})
    rp = Replayer(f64, f64.candidate_token_ids(store.candidates))
    cand = rp.cand_ids
    fs = store.fullseq(e)
    for cond in ("clean", "total"):
        for layer in fs.layers:
            h = torch.from_numpy(inp.full(cond, layer).astype(np.float64))[None].requires_grad_()
            pos = torch.from_numpy(inp.position_ids)[:, None, :]
            rope = rp._rope(h, pos)
            causal = torch.ones(h.shape[1], h.shape[1], dtype=torch.bool).tril()[None, None]
            x = h
            for j in range(layer + 1, rp.n_layers):
                x = rp._layer(j, x, causal, rope, None)
            logits = rp.head(rp.norm(x[:, -1]))[0]
            (logits[cand[t.gold[e]]] - logits[cand[t.prior[e]]]).backward()
            got = grads.fullseq_grad(e)[:, fs.conditions.index(cond), fs.layers.index(layer)]
            assert_rows_close(got.ravel()[None], h.grad[0].numpy().ravel()[None], rtol=1e-5)
            last = grads.grad_last(layer)[e, store.condition_index(cond)]
            assert_rows_close(last[None], h.grad[0, -1].numpy()[None], rtol=1e-5)


def test_estimates_are_gradient_dot_difference(setup, grads, both):
    store, _ = setup
    est = both.estimate["est_delta"]
    conds = store.condition_names
    s, t = conds.index("total"), conds.index("clean")
    hidden = store.hidden(reduction="last")  # [example, condition, layer, d]
    gl = list(both.groups).index("last")
    for li, layer in enumerate(store.layers):
        g = grads.grad_last(layer)[:, t].astype(np.float64)
        delta = hidden[:, s, li] - hidden[:, t, li]
        np.testing.assert_allclose(
            est[s, t, :, li, gl, 0], (g * delta).sum(-1), rtol=1e-5, atol=1e-6
        )
        if layer >= 0:
            write = delta - (hidden[:, s, li - 1] - hidden[:, t, li - 1])
            np.testing.assert_allclose(
                est[s, t, :, li, gl, 1], (g * write).sum(-1), rtol=1e-5, atol=1e-6
            )
    e = store.fullseq_examples()[0]
    fs = store.fullseq(e)
    gi = list(both.groups).index("image")
    img = fs.kind == 1
    fg = grads.fullseq_grad(e)
    for li, layer in enumerate(fs.layers):
        d = (
            fs.values[img, fs.conditions.index("total"), li]
            - fs.values[img, fs.conditions.index("clean"), li]
        )
        want = (fg[img, fs.conditions.index("clean"), li].astype(np.float64) * d).sum()
        assert est[
            s, t, list(store.rows()).index(e), store.layer_index(layer), gi, 0
        ] == pytest.approx(want, rel=1e-5)
    assert np.isnan(est[s, t, ~np.isin(store.rows(), store.fullseq_examples()), :, gi]).all()


def test_estimates_are_the_first_order_term_of_exact_replay(setup, f64, both):
    """Central differences of exact replay along source - target equal the estimate.

    eps = 3e-4 in float64: the Taylor remainder is O(eps^2) (measured 3e-4 of the row scale at
    the most curved cell; 3e-3 at eps = 1e-3) and float32 round-off inside the RMSNorm adds about
    1e-7 x |margin| / eps (5e-5), so agreement to 1e-3 of the row scale is what this can show; a
    sign, mode or indexing error in the estimate misses it by orders of magnitude.
    """
    store, _ = setup
    t = store_targets(store)
    rp = Replayer(f64, f64.candidate_token_ids(store.candidates))
    est = both.estimate["est_delta"][store.condition_index("total"), store.condition_index("clean")]
    eps = 3e-4
    for e in [i for i in store.fullseq_examples() if t.defined[i]][:3]:
        inp = replay_input(store, e, "x", _last_states(store, set(), ()))
        states = {k: v.astype(np.float64) for k, v in inp.states.items()}
        for sign, name in ((1.0, "plus"), (-1.0, "minus")):
            for c, v in list(inp.states):
                if c == "clean":
                    d = states[("total", v)] - states[("clean", v)]
                    states[(name, v)] = states[("clean", v)] + sign * eps * d
        moved = ReplayInput(e, "x", inp.kind, inp.input_ids, inp.position_ids, states)
        cells = [(v, g, m) for v in store.fullseq(e).layers for g in GROUPS for m in MODES]
        patches = [
            Patch(e, v, as_group(g), m, src, "clean")
            for v, g, m in cells
            for src in ("plus", "minus")
        ]
        lp, _ = replay_patches(rp, {e: moved}, patches)
        mg = margins(lp, t, np.full(len(lp), e))
        central = (mg[0::2] - mg[1::2]) / (2 * eps)
        li = [store.layer_index(v) for v, _, _ in cells]
        gi = [list(both.groups).index(g) for _, g, _ in cells]
        mi = [list(both.modes).index(m) for _, _, m in cells]
        want = est[list(store.rows()).index(e), li, gi, mi]
        assert_rows_close(central[None], want[None], rtol=1e-3)
        assert np.abs(want).max() > 1.0


def test_agreement_with_exact_is_reported(both):
    for key in ("total->clean", "clean->total", "all"):
        a = both.agreement[key]
        assert a.n_cells > 50
        assert -1 <= a.pearson <= 1 and -1 <= a.spearman <= 1
        assert 0 <= a.sign_agreement <= 1 and 0 <= a.top_k_overlap <= 1
    assert len(both.top_cells) == both.config.top_k
    top = both.top_cells
    assert abs(top[0]["estimate"]) >= abs(top[-1]["estimate"])
    assert all(np.isfinite(c["exact"]) for c in top)


def test_compare_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(scale=0.5, size=200)
    b[:10] = np.round(b[:10])  # ties for the rank correlation
    a[5] = np.nan
    got = compare(a, b, top_k=10)
    ok = np.isfinite(a)
    assert got.n_cells == 199
    assert got.pearson == pytest.approx(stats.pearsonr(a[ok], b[ok])[0], rel=1e-12)
    assert got.spearman == pytest.approx(stats.spearmanr(a[ok], b[ok])[0], rel=1e-12)
    assert got.sign_agreement == pytest.approx(np.mean(np.sign(a[ok]) == np.sign(b[ok])))
    same = compare(a, a, top_k=10)
    assert same.pearson == pytest.approx(1.0) and same.top_k_overlap == 1.0
    flipped = compare(a, -a, top_k=10)
    assert flipped.sign_agreement == 0.0 and flipped.spearman == pytest.approx(-1.0)
