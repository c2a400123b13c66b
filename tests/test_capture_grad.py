"""`priorscope capture --grad` end to end: the stored gradients feed `priorscope patch --estimate`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from priorscope.engine.capture.gradients import example_gradients
from priorscope.engine.data import synth
from priorscope.engine.errors import StoreError
from priorscope.engine.models.registry import load_model
from priorscope.engine.patch import PatchConfig, patch
from priorscope.engine.patch.estimate import MemoryGradients
from priorscope.engine.patch.schema import PATCH_GROUP
from priorscope.engine.store import open_results, open_store, verify


def cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "capture",
        "--model",
        "builtin:organism",
        "--data",
        str(data),
        "--out",
        str(out),
        "--ladder",
        "0.04",
        "--none",
        "--full-seq",
        "3",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--hidden-dtype",
        "float32",
        "--max-new-tokens",
        "2",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory):
    from priorscope.cli.main import main

    root = tmp_path_factory.mktemp("grad")
    rows = synth.generate(synth.SynthConfig(n=9, seed=3, size=84))
    rows = [dataclasses.replace(ex, id=f"g{i}") for i, ex in enumerate(rows)]
    data = synth.write_tsv(rows, root / "bench.tsv")
    out = root / "grad.zarr"
    assert main(cli_args(data, out, "--grad")) == 0
    return root, data, out, rows


def test_store_has_gradients_equal_to_an_out_of_loop_pass(captured) -> None:
    _, _, out, rows = captured
    assert verify(str(out), deep=True).ok
    store = open_store(out)
    assert store.has("grad/last") and store.has("grad/fullseq")
    adapter = load_model("builtin:organism", dtype="float32")
    examples = [rows[i] for i in store.examples().source_row]
    prior = [str(a) for a in store.outputs("answer")[:, store.condition_index("total")]]
    fs = store.fullseq(store.fullseq_examples()[0])
    last, full = example_gradients(
        adapter,
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
    assert np.abs(last).max() > 0  # some rows have a gold and a distinct prior
    for li, layer in enumerate(store.layers):
        np.testing.assert_allclose(store.grad_last(layer), last[:, :, li], rtol=1e-5, atol=1e-7)
    for e in store.fullseq_examples():
        got = store.fullseq_grad(e)
        assert got.shape == store.fullseq(e).values.shape
        np.testing.assert_allclose(got, full[e], rtol=1e-5, atol=1e-7)
    gold = np.asarray(open_store(out).group["grad/gold"][:])
    assert (gold >= 0).any()


def test_patch_estimate_reads_the_stored_gradients(captured) -> None:
    import typer
    from typer.testing import CliRunner

    from priorscope.cli.patch import register

    root, _, out, _ = captured
    app = typer.Typer()
    register(app)
    dest = root / "est.zarr"
    result = CliRunner().invoke(app, ["patch", str(out), "--estimate", "--out", str(dest)])
    assert result.exit_code == 0, result.output
    est = open_results(dest, PATCH_GROUP, mode="r").read("est_delta")
    # The same estimate from gradients handed over in memory (read back from the store here).
    store = open_store(out)
    mem = MemoryGradients(
        tuple(store.layers),
        np.stack([store.grad_last(v) for v in store.layers], axis=2),
        {e: store.fullseq_grad(e) for e in store.fullseq_examples()},
    )
    want = patch(store, PatchConfig(method="estimate"), gradients=mem).estimate["est_delta"]
    np.testing.assert_allclose(est, want, rtol=1e-5, equal_nan=True)
    assert np.isfinite(est).any() and np.abs(np.nan_to_num(est)).max() > 0


def test_resume_without_grad_is_refused_and_plain_stores_have_none(captured, capsys) -> None:
    from priorscope.cli.main import main

    root, data, out, _ = captured
    assert main(cli_args(data, out)) == 1  # the store was captured with --grad
    assert "grad: store has true, this run asks for false" in capsys.readouterr().err
    plain = root / "plain.zarr"
    assert main(cli_args(data, plain)) == 0
    store = open_store(plain)
    assert not store.has("grad/last")
    with pytest.raises(StoreError, match="--grad"):
        store.grad_last(0)
    # Stored values other than the gradients do not depend on --grad.
    np.testing.assert_array_equal(store.hidden(), open_store(out).hidden())


def test_data_flags_reach_the_loader_and_the_store_identity(captured) -> None:
    from priorscope.cli.main import main

    root, data, _, _ = captured
    out = root / "flags.zarr"
    assert main(cli_args(data, out, "--metric", "anls", "--limit", "4")) == 0
    config = open_store(out).attrs["config"]
    assert config["data_options"] == {"metric": "anls"}
    assert json.dumps(config["batch_size"]) == "4"
