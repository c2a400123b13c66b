"""Exact suffix replay against the stored runs and against full forwards with write hooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from patch_support import assert_rows_close, hooked_logprobs, organism_capture, splice

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.data import synth
from priorscope.engine.errors import ConfigMismatchError, ModelError, UsageError
from priorscope.engine.models.registry import load_model
from priorscope.engine.models.tiny import build_tiny
from priorscope.engine.patch import PatchConfig, PositionGroup, patch
from priorscope.engine.patch.model import load_store_model
from priorscope.engine.patch.replay import (
    GROUPS,
    MODES,
    Patch,
    Replayer,
    as_group,
    check_aligned,
    check_cell,
    patched_state,
    replay_patches,
    replay_unpatched,
)
from priorscope.engine.patch.run import _last_states, replay_input
from priorscope.engine.patch.schema import PATCH_GROUP
from priorscope.engine.store import open_results, open_store

LAYERS = (-1, 0, 1, 2, 3)


@pytest.fixture(scope="module")
def organism():
    return load_model("builtin:organism", dtype="float32")


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory, organism):
    path, rows = organism_capture(tmp_path_factory.mktemp("patch"), organism)
    return open_store(path), rows


@pytest.fixture(scope="module")
def inputs(captured):
    store, _ = captured
    last = _last_states(store, {"none", "clean", "total"}, LAYERS)
    ids = store.examples().ids
    return {e: replay_input(store, e, ids[e], last) for e in store.fullseq_examples()}


@pytest.fixture(scope="module")
def replayer(captured, organism):
    store, _ = captured
    return Replayer(organism, organism.candidate_token_ids(store.candidates), batch_size=16)


def example_of(store, rows, e):
    return rows[int(store.examples().source_row[e])]


def test_unpatched_replay_reproduces_the_stored_logprobs(captured, inputs, replayer):
    store, _ = captured
    stored = store.outputs("cand_logprob")
    cells = [(e, c, v) for e in inputs for c in ("clean", "blur@0.04", "total") for v in LAYERS]
    got = replay_unpatched(replayer, inputs, cells)
    want = np.stack([stored[e, store.condition_index(c)] for e, c, _ in cells])
    assert_rows_close(got, want, rtol=1e-5)
    # Not a tautology: other conditions' log-probs are far from these.
    other = np.stack([stored[e, store.condition_index("total")] for e, _, _ in cells])
    assert np.abs(got - other).max() > 1.0


def cases(examples):
    custom = PositionGroup("question_end", indices=(-6, -5, -4))
    for e in examples:
        for layer in (-1, 1, 3):
            for group in (*map(as_group, GROUPS), custom):
                for mode in MODES:
                    for src, tgt in (("total", "clean"), ("clean", "total")):
                        yield Patch(e, layer, group, mode, src, tgt)


def test_replay_equals_a_full_forward_with_the_splice_hooked(captured, inputs, replayer, organism):
    store, rows = captured
    examples = store.fullseq_examples()[:3]
    patches = list(cases(examples))
    got, _ = replay_patches(replayer, inputs, patches)
    cand_ids = organism.candidate_token_ids(store.candidates)
    want = []
    for p in patches:
        inp = inputs[p.example]
        mask = p.group.mask(inp.kind)
        write = splice(p.layer, patched_state(inp, p, mask), mask)
        ex = example_of(store, rows, p.example)
        want.append(hooked_logprobs(organism, ex, p.target, store.conditions, cand_ids, [write]))
    want = np.stack(want)
    assert_rows_close(got, want, rtol=1e-5)
    # The patches do change the answer distribution (the comparison has teeth).
    base = np.stack(
        [store.outputs("cand_logprob")[p.example, store.condition_index(p.target)] for p in patches]
    )
    assert np.abs(want - base).max() > 1.0


def test_last_token_patch_is_a_one_token_pass_equal_to_the_full_suffix(inputs, replayer):
    examples = list(inputs)[:4]
    last = [
        Patch(e, v, as_group("last"), m, s, t)
        for e in examples
        for v in LAYERS
        for m in MODES
        for s, t in (("total", "clean"), ("none", "clean"), ("clean", "total"))
    ]
    calls = replayer.calls
    one_token, base = replay_patches(replayer, inputs, last)
    assert (
        len(base) == len(examples) * len(LAYERS) * 2
    )  # one prefix pass per (example, target, layer)
    assert replayer.calls > calls
    # The same patched states run as whole sequences through the suffix.
    full = PositionGroup("last_as_set", indices=(-1,))
    as_full = [Patch(p.example, p.layer, full, p.mode, p.source, p.target) for p in last]
    wants = [p for p in as_full if p.source != "none"]
    want, _ = replay_patches(replayer, inputs, wants)
    got = np.stack([one_token[i] for i, p in enumerate(last) if p.source != "none"])
    assert_rows_close(got, want, rtol=1e-5)


def test_none_source_last_token_equals_the_hooked_forward(captured, inputs, replayer, organism):
    store, rows = captured
    e = store.fullseq_examples()[1]
    patches = [Patch(e, v, as_group("last"), m, "none", "clean") for v in (0, 2) for m in MODES]
    got, _ = replay_patches(replayer, inputs, patches)
    cand_ids = organism.candidate_token_ids(store.candidates)
    inp = inputs[e]
    mask = np.zeros(inp.n_tokens, dtype=bool)
    mask[-1] = True
    for p, lp in zip(patches, got, strict=True):
        state = inp.full("clean", p.layer).copy()
        h = store.hidden(condition="none", reduction="last")[e]  # [layer, d]
        at = store.layer_index
        if p.mode == "state":
            state[-1] = h[at(p.layer)]
        else:
            write = h[at(p.layer)] - h[at(p.layer - 1)]
            state[-1] = inp.full("clean", p.layer - 1)[-1] + write
        ex = example_of(store, rows, e)
        want = hooked_logprobs(
            organism, ex, "clean", store.conditions, cand_ids, [splice(p.layer, state, mask)]
        )
        assert_rows_close(lp, want, rtol=1e-5)


def test_a_cut_is_refused(inputs):
    e = next(iter(inputs))
    everything = PositionGroup("everything", select=lambda kind: np.ones(len(kind), dtype=bool))
    with pytest.raises(UsageError, match="cut"):
        check_cell(inputs[e], Patch(e, 2, everything, "state", "total", "clean"))
    with pytest.raises(UsageError, match="cut"):
        check_cell(inputs[e], Patch(e, -1, everything, "write", "total", "clean"))
    # Swapping what one layer wrote at every position is not a cut: it runs.
    check_cell(inputs[e], Patch(e, 2, everything, "write", "total", "clean"))


def test_misaligned_positions_are_refused_naming_the_example(inputs):
    e = next(iter(inputs))
    inp = inputs[e]
    with pytest.raises(UsageError, match=rf"example {inp.label}.*--groups last"):
        check_cell(inp, Patch(e, 1, as_group("image"), "state", "none", "clean"))
    shorter = type(inp)(e, inp.label, inp.kind[1:], inp.input_ids[1:], inp.position_ids[:, 1:], {})
    with pytest.raises(UsageError, match=rf"example {inp.label}.*same tokens"):
        check_aligned(inp, shorter, as_group("text"))
    check_aligned(inp, shorter, as_group("last"))  # the answer position always lines up


def test_patch_writes_a_results_store_and_refuses_another_config(
    tmp_path: Path, captured, organism
):
    store, _ = captured
    out = tmp_path / "p.zarr"
    cfg = PatchConfig(examples=5, layers="embed,2,3", groups=("image", "last"), out=str(out))
    result = patch(store, cfg, adapter=organism)
    ex = result.exact
    assert ex["logprob"].shape == (2, 5, 3, 2, 2, len(store.candidates))
    assert np.nanmax(ex["replay_check"]) < 1e-5
    gap = ex["margin_source"] - ex["margin_target"]
    ok = np.abs(gap) >= cfg.min_gap
    want = ex["delta"] / gap[:, :, None, None, None]
    np.testing.assert_allclose(ex["effect"][ok], want[ok], rtol=1e-5)
    assert np.isnan(ex["effect"][~ok]).all()
    back = open_results(out, PATCH_GROUP, mode="r")
    np.testing.assert_array_equal(back.read("effect"), ex["effect"])
    np.testing.assert_array_equal(back.read("example"), result.rows)
    assert back.to_xarray()["effect"].dims == ("direction", "example", "layer", "group", "mode")
    with pytest.raises(ConfigMismatchError, match="examples"):
        patch(
            store,
            PatchConfig(examples=3, layers="embed,2,3", groups=("image", "last"), out=str(out)),
            adapter=organism,
        )


def test_config_is_validated_where_it_is_built():
    with pytest.raises(UsageError, match="different --source and --target"):
        PatchConfig(source="clean", target="clean")
    with pytest.raises(UsageError, match="stat"):
        PatchConfig(modes=("stat",))
    with pytest.raises(UsageError, match="blur@S"):
        PatchConfig(source="blurry")
    with pytest.raises(UsageError, match="--examples"):
        PatchConfig(examples=0)
    with pytest.raises(UsageError, match="patch method"):
        PatchConfig(method="fast")


def test_patch_layers_outside_the_full_sequences_are_refused(captured, organism):
    store, _ = captured
    with pytest.raises(UsageError, match="between 0 and 3"):
        patch(store, PatchConfig(layers="7"), adapter=organism)


def test_a_model_with_other_weights_is_refused_naming_both_hashes(tmp_path: Path, captured):
    store, _ = captured
    other = build_tiny("qwen2_5_vl", tmp_path / "tiny")
    recorded = store.model_ref["weights_sha256"]
    with pytest.raises(ModelError) as err:
        load_store_model(store, str(other))
    assert recorded in str(err.value)
    got = load_model(str(other)).weights_sha256()
    assert got in str(err.value) and got != recorded
    assert load_store_model(store).weights_sha256() == recorded


def test_organism_layer_profile(captured, organism):
    """Noising with total obfuscation: image tokens matter at the embedding only, the last token
    carries the whole effect at the last layer (the organism card's layer profile)."""
    store, _ = captured
    result = patch(
        store,
        PatchConfig(groups=("image", "text", "last"), modes=("state",), both_directions=False),
        adapter=organism,
    )
    table = store.examples()
    at = np.searchsorted(table.rows, result.rows)
    colour = (table.column("template")[at] == "color") & (result.prior >= 0)
    assert colour.sum() >= 5
    effect = result.exact["effect"][0][colour][..., 0]  # [example, layer, group]
    top = result.exact["top"][0][colour][..., 0]
    img, txt, last = 0, 1, 2
    first, final = 0, len(result.layers) - 1
    assert np.nanmean(effect[:, first, img]) > 0.9
    assert (top[:, first, img] == result.prior[colour]).mean() >= 0.8  # answers the prior
    # In between, the colour sits at the question's text tokens (the organism's binding at layer 1).
    assert np.nanmean(effect[:, result.layers.index(1), txt]) > 0.8
    assert abs(np.nanmean(effect[:, final, img])) < 0.05
    assert np.nanmean(effect[:, final, last]) > 0.95
    assert (top[:, final, last] == result.prior[colour]).mean() >= 0.8


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llava_next"])
def test_replay_on_other_families(tmp_path: Path, family: str):
    """1-D rotary positions (LLaVA) and Qwen2-VL's M-RoPE replay like the organism's."""
    folder = build_tiny(family, tmp_path / "model")
    adapter = load_model(str(folder), dtype="float32")
    rows = synth.generate(synth.SynthConfig(n=4, seed=1, size=56))
    data = synth.write_tsv(rows, tmp_path / "bench.tsv")
    cfg = CaptureConfig(
        model=str(folder),
        data=str(data),
        out=str(tmp_path / "s.zarr"),
        ladder=(),
        total=True,
        full_seq=4,
        full_seq_layers="all",
        batch_size=4,
        device="cpu",
        dtype="float32",
        hidden_dtype="float32",
        max_new_tokens=1,
        progress=False,
    )
    store = open_store(capture(cfg, adapter=adapter))
    rp = Replayer(adapter, adapter.candidate_token_ids(store.candidates))
    inputs = {e: replay_input(store, e, str(e), {}) for e in store.fullseq_examples()}
    fs = store.fullseq(store.fullseq_examples()[0])
    cells = [(e, c, v) for e in inputs for c in fs.conditions for v in fs.layers]
    stored = store.outputs("cand_logprob")
    want = np.stack([stored[e, store.condition_index(c)] for e, c, _ in cells])
    assert_rows_close(replay_unpatched(rp, inputs, cells), want, rtol=1e-5)
    e = store.fullseq_examples()[0]
    p = Patch(e, 0, as_group("image"), "state", "total", "clean")
    mask = p.group.mask(inputs[e].kind)
    got, _ = replay_patches(rp, inputs, [p])
    ex = rows[int(store.examples().source_row[e])]
    cand = adapter.candidate_token_ids(store.candidates)
    write = splice(0, patched_state(inputs[e], p, mask), mask)
    assert_rows_close(
        got[0], hooked_logprobs(adapter, ex, "clean", store.conditions, cand, [write])
    )
