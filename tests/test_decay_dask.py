"""Decay metrics read through dask, block by block, equal the in-memory numbers exactly."""

from __future__ import annotations

import numpy as np
import pytest

from priorscope.engine.analysis import decay as D
from priorscope.engine.conditions import build_conditions
from priorscope.engine.store import open_store, write_answer_store

N = 12_000
CHUNK = 500


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(7)
    conds = build_conditions((0.01, 0.02, 0.04, 0.08), total=True, none=True)
    letters = np.array(list("ABCD"))
    gold = letters[rng.integers(0, 4, N)]
    # Answers drift away from gold as the level rises, so every metric is non-trivial.
    keep = rng.random((N, len(conds))) < np.linspace(0.9, 0.3, len(conds))
    answer = np.where(keep, gold[:, None], letters[rng.integers(0, 4, (N, len(conds)))])
    answer[rng.random((N, len(conds))) < 0.02] = ""
    score = (answer == gold[:, None]).astype(np.float32)
    done = rng.random(N) > 0.01  # a few uncommitted rows must be skipped the same way
    path = tmp_path_factory.mktemp("big") / "big.zarr"
    write_answer_store(
        path,
        conditions=conds,
        ids=[f"q{i}" for i in range(N)],
        gold=[[g] for g in gold],
        options=[("w", "x", "y", "z")] * N,
        answer=answer,
        score=score,
        benchmark=np.where(np.arange(N) % 3 == 0, "alpha", "beta").tolist(),
        category=letters[np.arange(N) % 4].tolist(),
        done=done,
        chunk_rows=CHUNK,
    )
    return path


def _same(a: D.DecayResult, b: D.DecayResult) -> None:
    assert [g.key for g in a.groups] == [g.key for g in b.groups]
    for ga, gb in zip(a.groups, b.groups, strict=True):
        assert ga.n == gb.n
        for name in ga.values:
            np.testing.assert_array_equal(ga.values[name], gb.values[name], err_msg=name)
            np.testing.assert_array_equal(ga.low[name], gb.low[name], err_msg=name)
            np.testing.assert_array_equal(ga.high[name], gb.high[name], err_msg=name)
    assert a.n_uncommitted == b.n_uncommitted > 0


def test_reads_are_chunked_along_examples(big_store) -> None:
    store = open_store(big_store)
    answer = store.outputs_dask("answer", chunk_rows=CHUNK)
    assert answer.numblocks[0] >= N // CHUNK - 1
    assert store.outputs_dask("score").shape == (store.examples().n, 7)
    # Lazy and eager reads see the same committed rows.
    assert np.array_equal(answer.compute(), store.outputs("answer"))


def test_threads_scheduler_equals_in_memory(big_store) -> None:
    cfg = D.DecayConfig(by="category", n_boot=60, chunk_rows=CHUNK)
    _same(D.compute_decay(big_store, cfg, in_memory=True), D.compute_decay(big_store, cfg))


def test_distributed_cluster_equals_in_memory(big_store) -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        dashboard_address=None,
        # An in-process worker measures the whole test process: any limit would pause it (and
        # hang the compute) once the suite has grown the process past 80% of the limit.
        memory_limit=0,
    ) as cluster:
        cfg = D.DecayConfig(n_boot=60, chunk_rows=CHUNK, scheduler=cluster.scheduler_address)
        lazy = D.compute_decay(big_store, cfg)
    _same(D.compute_decay(big_store, cfg, in_memory=True), lazy)
    acc = lazy.group("alpha").values["accuracy"]
    assert acc[0] > acc[5] + 0.3  # clean well above total: the drift is visible
