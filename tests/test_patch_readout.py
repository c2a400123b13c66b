"""States kept by layer replacement, and the read-outs of them (priorscope.engine.patch.readout).

Kept states are checked against full forwards (vision tower included) with the patch hooked in;
the read-out against the probe engine's split and the store's own states.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from patch_support import assert_rows_close, organism_capture, splice
from typer.testing import CliRunner

from priorscope.cli.patch import register
from priorscope.engine.capture.images import condition_images
from priorscope.engine.errors import UsageError
from priorscope.engine.models.registry import load_model
from priorscope.engine.models.sites import hooks, site_name
from priorscope.engine.patch import PatchConfig, patch, read_patch, readout
from priorscope.engine.patch.readout import held_out_accuracy
from priorscope.engine.patch.replay import (
    MODES,
    Patch,
    Replayer,
    as_group,
    patched_state,
    replay_patches,
)
from priorscope.engine.patch.run import _last_states, kept_layers, replay_input
from priorscope.engine.probes.run import store_split
from priorscope.engine.store import open_store

LAYERS = (-1, 0, 1, 2, 3)


@pytest.fixture(scope="module")
def organism():
    return load_model("builtin:organism", dtype="float32")


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory, organism):
    path, rows = organism_capture(tmp_path_factory.mktemp("readout"), organism)
    return open_store(path), rows


def hooked_states(adapter, example, condition, conditions, writes) -> np.ndarray:
    """Return the answer-position state [layer, d] at every store layer of a hooked forward."""
    images = condition_images([example], conditions, adapter.device)
    batch = adapter.encode([example], [images[condition][0]])
    seen: dict[int, torch.Tensor] = {}
    reads = {
        site_name(v): (lambda t, v=v: seen.__setitem__(v, t[0, -1].detach().clone()))
        for v in LAYERS
    }
    with hooks(adapter, reads=reads, writes=writes), torch.no_grad():
        adapter.model(**batch)
    return torch.stack([seen[v] for v in LAYERS]).float().numpy()


def test_kept_states_equal_a_full_forward_with_the_patch_hooked(captured, organism):
    store, rows = captured
    last = _last_states(store, {"clean", "total"}, LAYERS)
    ids = store.examples().ids
    examples = store.fullseq_examples()[:2]
    inputs = {e: replay_input(store, e, ids[e], last) for e in examples}
    patches = [
        Patch(e, layer, as_group(group), mode, src, tgt)
        for e in examples
        for layer in (-1, 1, 3)
        for group in ("image", "last")
        for mode in MODES
        for src, tgt in (("total", "clean"), ("clean", "total"))
    ]
    replayer = Replayer(organism, organism.candidate_token_ids(store.candidates), keep=LAYERS)
    d = store.fullseq(examples[0]).values.shape[-1]
    kept = np.full((len(patches), len(LAYERS), d), np.nan, np.float32)
    replay_patches(replayer, inputs, patches, kept)
    want = []
    for p in patches:
        inp = inputs[p.example]
        mask = p.group.mask(inp.kind)
        write = splice(p.layer, patched_state(inp, p, mask), mask)
        example = rows[int(store.examples().source_row[p.example])]
        want.append(hooked_states(organism, example, p.target, store.conditions, [write]))
    want = np.stack(want)
    assert_rows_close(kept, want, rtol=1e-5)
    # Teeth: the patches change the states above the patched layer.
    unpatched = np.stack(
        [[inputs[p.example].full(p.target, v)[-1] for v in LAYERS] for p in patches]
    )
    above = np.array([[v > p.layer for v in LAYERS] for p in patches])
    assert np.abs(kept - unpatched)[above].max() > 0.1
    # Below the patched layer the kept state is the target run's own.
    below = np.array([[v < p.layer for v in LAYERS] for p in patches])
    np.testing.assert_array_equal(kept[below], unpatched[below])


def test_a_replayer_without_the_kept_layers_is_refused(captured, organism):
    store, _ = captured
    replayer = Replayer(organism, organism.candidate_token_ids(store.candidates), keep=(3,))
    with pytest.raises(UsageError, match="room for 1 kept layers"):
        replay_patches(replayer, {}, [], np.zeros((0, 2, 8), np.float32))


def test_keep_spec_names_what_it_cannot_keep(tmp_path: Path, organism):
    path, _ = organism_capture(tmp_path, organism, full_seq=4)
    store = open_store(path)
    assert kept_layers(store, "", (1,)) == ()
    assert kept_layers(store, "final", (1,)) == (3,)
    assert kept_layers(store, "all", (1,)) == LAYERS
    assert kept_layers(store, "resid.2,resid.3", (1, 2)) == (2, 3)
    assert kept_layers(store, "0:4:2", (1,)) == (0, 2)


def test_patch_keeps_states_writes_them_and_reads_them_back(tmp_path: Path, captured, organism):
    store, _ = captured
    out = tmp_path / "kept.zarr"
    cfg = PatchConfig(
        source="clean",
        target="total",
        layers="resid.1,resid.3",
        groups=("last",),
        modes=("state",),
        keep="all",
        out=str(out),
    )
    result = patch(store, cfg, adapter=organism)
    kept = result.exact["kept"]
    n = len(result.rows)
    assert result.kept_layers == LAYERS
    assert kept.shape == (
        2,
        n,
        2,
        1,
        1,
        len(LAYERS),
        store.fullseq(int(result.rows[0])).values.shape[-1],
    )
    assert np.isfinite(kept).all()
    # Patching the last layer's answer-position state keeps exactly the source's state there.
    final = store.hidden(layer=3, reduction="last")  # [example, condition, d]
    at = np.searchsorted(store.rows(), result.rows)
    for di, (src, _) in enumerate(result.directions):
        np.testing.assert_array_equal(
            kept[di, :, 1, 0, 0, -1], final[at, store.condition_index(src)]
        )
    back = read_patch(out)
    np.testing.assert_array_equal(back.exact["kept"], kept)
    assert back.kept_layers == LAYERS
    assert back.config.keep == "all"


def test_held_out_accuracy_reads_a_planted_direction_and_not_noise():
    rng = np.random.default_rng(0)
    n, d, k = 400, 32, 4
    y = rng.integers(0, k, n).astype(np.int32)
    x = rng.normal(size=(n, d))
    fold = (np.arange(n) % 5).astype(np.int8)
    noise = held_out_accuracy(x, y, fold, k)
    assert abs(noise - 1 / k) < 0.1
    x[np.arange(n), y] += 5.0  # each class moves its own feature
    assert held_out_accuracy(x, y, fold, k) > 0.95
    y[:10] = -1  # unlabelled rows are left out, not scored
    x[10:20] = np.nan  # so are rows whose cell did not run
    assert held_out_accuracy(x, y, fold, k) > 0.95
    assert np.isnan(held_out_accuracy(x, np.full(n, -1, np.int32), fold, k))


def test_readout_of_a_patched_last_layer_equals_the_source_runs_own(
    tmp_path: Path, captured, organism
):
    store, _ = captured
    cfg = PatchConfig(
        source="clean",
        target="total",
        layers="resid.3",
        groups=("last",),
        modes=("state",),
        keep="all",
    )
    result = patch(store, cfg, adapter=organism)
    ro = readout(store, result, "template", folds=4)
    assert ro.kept_layers == LAYERS and ro.n == len(result.rows)
    split = store_split(
        store, store.examples().take(np.searchsorted(store.rows(), result.rows)), 4, 0, "auto"
    )
    assert ro.group_by == split.group_by
    for direction in ro.directions:
        src, tgt = direction.split("->")
        got = ro.cell(direction, "last", "state")[0]  # [kept layer]
        # Below the patch the target's own states, at the last layer the source's.
        np.testing.assert_allclose(got[:-1], ro.unpatched[tgt][:-1], rtol=1e-12)
        assert got[-1] == pytest.approx(ro.unpatched[src][-1], rel=1e-12)
    assert ro.curve(direction, "last", "state", 3) == {3: float(got[-1])}
    assert ro.loss_layer(ro.directions[0], "last", "state", 3) is None
    with pytest.raises(UsageError, match="kept states"):
        readout(
            store, patch(store, PatchConfig(layers="resid.3", groups=("last",)), adapter=organism)
        )


def test_cli_patch_readout_prints_the_table(tmp_path: Path, organism):
    path, _ = organism_capture(tmp_path, organism, full_seq=12)
    args = [
        "patch",
        str(path),
        "--source",
        "clean",
        "--target",
        "total",
        "--one-way",
        "--groups",
        "last",
        "--mode",
        "state",
        "--layers",
        "resid.1,resid.2",
        "--readout",
        "template",
        "--folds",
        "3",
    ]
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "clean->total, last state: read-out by kept layer" in result.output
    assert "none (total)" in result.output
    back = read_patch(Path(str(path)[: -len(".zarr")] + ".patch.zarr"))
    assert back.kept_layers == LAYERS


def test_kept_states_too_large_for_memory_are_refused_naming_the_options(
    captured, organism, monkeypatch: pytest.MonkeyPatch
):
    import priorscope.engine.patch.run as run

    store, _ = captured
    monkeypatch.setattr(run, "KEEP_LIMIT", 1 << 16)
    cfg = PatchConfig(layers="resid.1", groups=("last",), modes=("state",), keep="all")
    with pytest.raises(UsageError, match=r"fit in 6.1e-05 GiB.*Narrow --keep"):
        patch(store, cfg, adapter=organism)


def test_cli_readout_needs_exact_replay(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(
        app, ["patch", str(tmp_path / "none.zarr"), "--estimate", "--readout", "gold"]
    )
    assert result.exit_code != 0
    assert "Expected exact replay for --readout" in str(result.exception)
