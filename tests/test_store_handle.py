"""The one store handle: commit policy in eager, lazy and chunk reads, checks on open, groups."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from store_support import half_written_store

from priorscope.engine.errors import StoreError, UnknownNameError
from priorscope.engine.store import (
    HiddenChunk,
    info,
    open_for_capture,
    open_store,
    read_hidden_chunk,
    schema,
    verify,
)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def built(request, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("handle") / f"{request.param}.zarr"
    return half_written_store(path, hidden_dtype=request.param)


def test_half_written_store_reads_agree_and_exclude_uncommitted(built) -> None:
    store = open_store(built.path)
    done = built.committed
    assert store.committed().tolist() == done.tolist() and not done.all()
    rows = np.flatnonzero(done)
    assert store.rows().tolist() == rows.tolist()
    eager = store.hidden()
    lazy = np.asarray(store.hidden_dask().compute())
    # The torn shard's hidden states are on disk; neither read may return them.
    assert eager.shape[0] == lazy.shape[0] == rows.size
    assert np.array_equal(eager, lazy) and np.array_equal(eager, built.hidden[rows])
    for name in ("score", "answer"):
        eager_out = store.outputs(name)
        assert np.array_equal(eager_out, np.asarray(store.outputs_dask(name).compute()))
        assert eager_out.tolist() == getattr(built, name)[rows].tolist()
    table = store.examples()
    assert table.rows.tolist() == rows.tolist() and table.n_uncommitted == (~done).sum()
    assert list(table.ids) == [f"q{i}" for i in rows]
    xr_ds = store.to_xarray()
    assert xr_ds["hidden"].shape[0] == rows.size
    assert np.array_equal(xr_ds["score"].values, built.score[rows])
    assert xr_ds["id"].values.tolist() == list(table.ids)


def test_include_uncommitted_shows_every_row_lazily_and_eagerly(built) -> None:
    store = open_store(built.path)
    every = store.hidden(include_uncommitted=True)
    assert every.shape[0] == built.layout.n_examples
    assert np.array_equal(every, np.asarray(store.hidden_dask(include_uncommitted=True)))
    assert store.examples(include_uncommitted=True).n == built.layout.n_examples
    torn = slice(*built.layout.shard_range(4))
    assert np.array_equal(every[torn], built.hidden[torn])


def test_hidden_slices_by_site_name_layer_and_condition(built) -> None:
    store = open_store(built.path)
    rows = store.rows()
    assert store.sites == ["embed", "resid.0", "resid.1"]
    got = store.hidden(layer="resid.0", condition="total", reduction="text_mean")
    assert np.array_equal(got, built.hidden[rows, 2, 1, 2])
    assert np.array_equal(store.hidden(layer="embed"), store.hidden(layer=-1))
    with pytest.raises(UnknownNameError, match=r"resid\.1"):
        store.hidden(layer="resid.7")


def test_chunk_iterator_equals_the_eager_slice(built) -> None:
    store = open_store(built.path)
    want = store.hidden(layer=1, condition="blur@0.04")
    parts = list(store.iter_hidden_chunks(1, "blur@0.04"))
    assert all(len(r) <= built.layout.shard_examples for r, _ in parts)
    rows = np.concatenate([r for r, _ in parts])
    assert rows.tolist() == store.rows().tolist()
    np.testing.assert_array_equal(np.concatenate([v for _, v in parts]), want)
    tasks = store.hidden_chunk_tasks("resid.1", "blur@0.04")
    assert isinstance(tasks[0], HiddenChunk) and tasks[0] == (store.path, 1, "blur@0.04", 0, 2)
    # Read through a fresh open in each task, as a worker does: the same committed rows.
    read = [read_hidden_chunk(t) for t in tasks]
    np.testing.assert_array_equal(np.concatenate([v for _, v in read]), want)


def test_chunk_tasks_run_in_a_local_cluster_of_processes(built) -> None:
    from distributed import Client, LocalCluster

    store = open_store(built.path)
    tasks = store.hidden_chunk_tasks(-1, "clean")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        results = client.gather(client.map(read_hidden_chunk, tasks))
    rows = np.concatenate([r for r, _ in results])
    assert rows.tolist() == store.rows().tolist()
    np.testing.assert_array_equal(
        np.concatenate([v for _, v in results]), store.hidden(layer="embed", condition="clean")
    )


def test_example_table_columns_and_metadata(built) -> None:
    table = open_store(built.path).examples()
    assert table.column("template").tolist() == [
        ("color", "count", "prior")[r % 3] for r in table.rows
    ]
    assert table.column("k").tolist() == table.rows.tolist()
    assert table.column("gold").tolist()[0] == ("A",)
    assert table.condition_index("total") == 2 and table.condition_index("none") is None
    with pytest.raises(UnknownNameError, match="Did you mean 'template'"):
        table.column("templat")


def test_select_and_where_show_a_subset_to_every_read(built) -> None:
    from priorscope.engine.analysis import DecayConfig, compute_decay
    from priorscope.engine.errors import UsageError

    store = open_store(built.path)
    visible = store.rows()
    colour = store.where("template", "color")
    rows = colour.rows()
    assert rows.tolist() == [r for r in visible if r % 3 == 0] and rows.size > 0
    table = colour.examples()
    assert set(table.column("template").tolist()) == {"color"}
    assert np.array_equal(colour.hidden(), built.hidden[rows])
    assert np.array_equal(np.asarray(colour.hidden_dask().compute()), built.hidden[rows])
    assert colour.outputs("score").tolist() == built.score[rows].tolist()
    # An analysis given the subset sees only it.
    assert compute_decay(colour, DecayConfig(n_boot=20)).groups[0].n == rows.size
    # Selecting uncommitted rows never reveals them; out-of-range rows are refused.
    hidden_row = int(np.flatnonzero(~built.committed)[0])
    assert store.select([hidden_row, int(visible[0])]).rows().tolist() == [int(visible[0])]
    with pytest.raises(UsageError, match="store rows between 0"):
        store.select([built.layout.n_examples])


def test_final_norm_and_unembed_match_the_model_modules(built) -> None:
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    store = open_store(built.path)
    norm = store.final_norm()
    assert norm.kind == "rmsnorm" and norm.bias is None and store.unembed().shape == (3, 6)
    x = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32) * 20
    module = Qwen2RMSNorm(6, eps=norm.eps)
    module.weight.data = torch.from_numpy(norm.weight)
    want = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(norm.apply(x), want, rtol=1e-5)
    layer = torch.nn.LayerNorm(6, eps=1e-5)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    ln = type(norm)("layernorm", layer.weight.detach().numpy(), layer.bias.detach().numpy(), 1e-5)
    np.testing.assert_allclose(
        ln.apply(x), layer(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6
    )


def _damaged_copy(built, tmp_path, name: str):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    shutil.copytree(built.path, path)
    return path


def test_store_without_commit_log_is_refused(built, tmp_path) -> None:
    path = _damaged_copy(built, tmp_path, "nocommit.zarr")
    shutil.rmtree(path / "commit")
    with pytest.raises(StoreError, match=r"array commit/done is missing"):
        open_store(path)
    report = verify(path)
    assert not report.ok and any("commit/done is missing" in p for p in report.problems)


def test_conditions_attribute_one_short_is_refused(built, tmp_path) -> None:
    path = _damaged_copy(built, tmp_path, "short.zarr")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["conditions"] = meta["attributes"]["conditions"][:-1]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"outputs/score has shape \(11, 3\), expected \(11, 2\)"):
        open_store(path)


def test_deleted_hidden_is_named_by_its_declared_group(built, tmp_path) -> None:
    path = _damaged_copy(built, tmp_path, "nohidden.zarr")
    shutil.rmtree(path / "hidden")
    report = verify(path)
    assert "array hidden is missing (group 'activations')" in report.problems


def test_deep_open_checks_committed_values(built, tmp_path) -> None:
    assert open_store(built.path, deep=True).n_examples == 11  # uncommitted rows are fine
    path = _damaged_copy(built, tmp_path, "nan.zarr")
    # Rewrite a committed example's log-probs as NaN in place: a lost write.
    open_for_capture(path)[schema.OUT_CAND_LOGPROB][0] = np.nan
    with pytest.raises(StoreError, match="lack candidate log-probs"):
        open_store(path, deep=True)


def test_info_lists_declared_groups(built) -> None:
    summary = info(built.path)
    groups = summary["groups"]
    assert set(groups) >= {"examples", "outputs", "commit", "activations", "fullseq"}
    assert groups["activations"]["present"] and not groups["fullseq"]["present"]
    assert "hidden" in summary["arrays"] and summary["committed"] == built.committed.sum()
    assert summary["arrays"]["hidden"]["dims"] == list(schema.DIMS[schema.HIDDEN])


def test_answers_only_store_carries_a_commit_log_and_verifies(tmp_path) -> None:
    from priorscope.engine.conditions import build_conditions
    from priorscope.engine.store import write_answer_store

    path = write_answer_store(
        tmp_path / "a.zarr",
        conditions=build_conditions((0.02,), total=True),
        ids=["a", "b", "c"],
        gold=[["x"]] * 3,
        answer=np.array([["x", "x", "y"]] * 3),
        score=np.array([[1, 1, 0]] * 3, dtype=np.float32),
        done=[True, False, True],
    )
    store = open_store(path)
    assert store.answers_only and store.committed().tolist() == [True, False, True]
    assert store.examples().ids == ("a", "c") and store.outputs("score").shape == (2, 3)
    assert not info(path)["groups"]["activations"]["present"]
    report = verify(path)
    assert report.problems == [
        "1 of 3 examples are not committed (1); re-run the same capture command to finish them"
    ]
    with pytest.raises(StoreError, match="answers-only store"):
        store.hidden()
