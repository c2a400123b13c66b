"""Analyses on a dask.distributed cluster: ``decay`` and ``report`` with ``--scheduler ADDRESS``.

A LocalCluster of 2 worker processes stands in for an existing cluster; the CLI connects to its
address like a user's would. Results equal the in-process ones exactly, and both workers ran
part of the graph.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from priorscope.cli.main import main
from priorscope.engine.conditions import build_conditions
from priorscope.engine.store import write_answer_store

N = 3000
CHUNK = 250  # 12 blocks along examples, spread over both workers


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(11)
    conds = build_conditions((0.02, 0.08), total=True, none=True)
    letters = np.array(list("ABCD"))
    gold = letters[rng.integers(0, 4, N)]
    keep = rng.random((N, len(conds))) < np.linspace(0.9, 0.3, len(conds))
    answer = np.where(keep, gold[:, None], letters[rng.integers(0, 4, (N, len(conds)))])
    score = (answer == gold[:, None]).astype(np.float32)
    path = tmp_path_factory.mktemp("cluster") / "s.zarr"
    return write_answer_store(
        path,
        conditions=conds,
        ids=[f"q{i}" for i in range(N)],
        gold=[[g] for g in gold],
        options=[("w", "x", "y", "z")] * N,
        answer=answer,
        score=score,
        benchmark=np.where(np.arange(N) % 2 == 0, "alpha", "beta").tolist(),
        category=letters[np.arange(N) % 4].tolist(),
        done=rng.random(N) > 0.02,
        chunk_rows=CHUNK,
    )


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit="1GiB",
        ) as c,
        Client(c) as client,
    ):
        yield c, client


def executed(client: Any) -> list[int]:
    """Return the number of tasks each worker has executed so far."""
    counts = client.run(lambda dask_worker: dask_worker.state.executed_count)
    return [counts[w] for w in sorted(counts)]


def without_scheduler(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc["config"].pop("scheduler")
    return doc


def test_decay_on_a_cluster_equals_in_process(store, cluster, tmp_path) -> None:
    local_cluster, client = cluster
    before = executed(client)
    common = ["--by", "category", "--n-boot", "60", "--chunk-rows", str(CHUNK)]
    remote, local = tmp_path / "remote.json", tmp_path / "local.json"
    address = local_cluster.scheduler_address
    assert main(["decay", str(store), *common, "--scheduler", address, "--json", str(remote)]) == 0
    assert main(["decay", str(store), *common, "--scheduler", "sync", "--json", str(local)]) == 0
    after = executed(client)
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)
    a, b = json.loads(remote.read_text()), json.loads(local.read_text())
    assert a["config"]["scheduler"] == address
    assert without_scheduler(a) == without_scheduler(b)
    alpha = next(g for g in a["groups"] if g["benchmark"] == "alpha" and g["category"] is None)
    assert alpha["metrics"]["accuracy"]["clean"]["value"] > 0.8  # the data are not degenerate


def test_report_on_a_cluster_equals_in_process(store, cluster, tmp_path) -> None:
    local_cluster, client = cluster
    before = executed(client)
    address = local_cluster.scheduler_address
    common = ["--n-boot", "60", "--by", "category"]
    remote, local = tmp_path / "remote.html", tmp_path / "local.html"
    assert main(["report", str(store), *common, "--scheduler", address, "--out", str(remote)]) == 0
    assert main(["report", str(store), *common, "--out", str(local)]) == 0
    assert all(b > a for a, b in zip(before, executed(client), strict=True))
    a = json.loads(remote.with_suffix(".json").read_text())
    b = json.loads(local.with_suffix(".json").read_text())
    assert without_scheduler(a["decay"]) == without_scheduler(b["decay"])
    assert a["findings"] == b["findings"] and a["strips"] == b["strips"]
