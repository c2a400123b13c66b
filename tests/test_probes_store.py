"""Probes over a real store with class signal planted at known places: found there, at chance
elsewhere; identical bits in-process, on a LocalCluster and after a SIGKILL and resume; close
to sklearn on the same splits; the CLI."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from priorscope.engine.errors import ConfigMismatchError
from priorscope.engine.probes import ProbeConfig, ProbeResult, fit_probes
from priorscope.engine.probes.run import pending, prepare
from priorscope.engine.probes.synthetic import PlantedStore, write_planted_store

# Gold-class signal at layer 1 under clean only, at layer 2 under clean and total; nothing at
# embed or layer 0, and nothing in image_mean anywhere.
PLANT = PlantedStore(
    n=360,
    d_model=24,
    layers=(-1, 0, 1, 2),
    reductions=("last", "image_mean"),
    conditions=("clean", "total"),
    signal={(1, "last", "clean"): 1.5, (2, "last", "clean"): 1.5, (2, "last", "total"): 1.5},
    images_per_group=2,
    shard_examples=64,
)
FAST = dict(
    mlp_max_epochs=25,
    mlp_patience=5,
    mlp_weight_decays=(1e-3,),
    mlp_batch=32,
    mlp_lr=3e-3,
    logistic_max_iter=150,
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_planted_store(tmp_path_factory.mktemp("planted") / "planted.zarr", PLANT)


@pytest.fixture(scope="module")
def full_run(planted: Path, tmp_path_factory: pytest.TempPathFactory) -> ProbeResult:
    cfg = ProbeConfig(
        targets=("gold", "template"),
        kinds="linear,mlp",
        train=("clean", "total"),
        controls=True,
        permutations=4,
        control_column="id",
        **FAST,  # type: ignore[arg-type]
    )
    return fit_probes(planted, cfg, str(tmp_path_factory.mktemp("runs") / "full.probes.zarr"))


def test_signal_is_found_where_planted_and_chance_elsewhere(full_run: ProbeResult) -> None:
    ds = full_run.to_xarray().load()
    for kind in ("ridge", "logistic", "mlp"):
        acc = ds.accuracy.sel(target="gold", kind=kind)
        # Planted: layer 1 (clean only) and layer 2 (both), in `last`.
        assert acc.sel(train="clean", test="clean", layer=1, reduction="last") > 0.9, kind
        assert acc.sel(train="clean", test="clean", layer=2, reduction="last") > 0.9, kind
        assert acc.sel(train="total", test="total", layer=2, reduction="last") > 0.9, kind
        # The same direction in both conditions at layer 2: a clean probe transfers to total.
        assert acc.sel(train="clean", test="total", layer=2, reduction="last") > 0.85, kind
        # No signal: within 3 standard errors of the majority rate.
        chance_cells = [
            acc.sel(train="clean", test="clean", layer=-1, reduction="last"),
            acc.sel(train="clean", test="clean", layer=0, reduction="last"),
            acc.sel(train="total", test="total", layer=1, reduction="last"),
            acc.sel(train="clean", test="total", layer=1, reduction="last"),
            *[
                acc.sel(train="clean", test="clean", layer=layer, reduction="image_mean")
                for layer in (-1, 0, 1, 2)
            ],
        ]
        majority = float(
            ds.majority.sel(
                target="gold", kind=kind, train="clean", test="clean", layer=0, reduction="last"
            )
        )
        se = np.sqrt(0.25 * 0.75 / PLANT.n)
        for cell in chance_cells:
            assert float(cell) < majority + 3 * se, (kind, cell)


def test_controls_and_selectivity(full_run: ProbeResult) -> None:
    ds = full_run.to_xarray().load()
    sel = ds.selectivity.sel(target="gold", kind="logistic", train="clean", test="clean")
    assert float(sel.sel(layer=1, reduction="last")) > 0.5
    assert abs(float(sel.sel(layer=0, reduction="last"))) < 0.12  # near zero without signal
    p = ds.perm_p.sel(target="gold", kind="logistic", train="clean", test="clean")
    assert float(p.sel(layer=1, reduction="last")) == pytest.approx(1 / 5)  # beats every null
    perms = ds.perm_accuracy.sel(
        target="gold", kind="ridge", train="clean", test="clean", layer=1, reduction="last"
    )
    assert np.isfinite(perms.values).all() and float(perms.max()) < 0.45
    np.testing.assert_allclose(
        ds.selectivity.values,
        ds.accuracy.values - ds.control_accuracy.values,
        rtol=1e-12,
        equal_nan=True,
    )
    assert (ds.chance.sel(target="gold").values == 0.25).all()


def test_result_records_cells_weights_and_targets(full_run: ProbeResult) -> None:
    ds = full_run.to_xarray()
    assert ds.accuracy.dims == ("target", "kind", "train", "test", "layer", "reduction")
    assert list(ds.site.values) == ["embed", "resid.0", "resid.1", "resid.2"]
    assert full_run.done().all()
    w = ds.weights.sel(
        target="gold", linear_kind="logistic", train="clean", layer=1, reduction="last"
    ).values
    assert w.shape == (4, PLANT.d_model) and np.isfinite(w).all()
    assert ds.n_test.sel(target="gold").max() == PLANT.n
    assert float(
        ds.n_train.sel(
            target="gold", kind="ridge", train="clean", test="clean", layer=0, reduction="last"
        )
    ) == pytest.approx(PLANT.n * 0.8, abs=2)
    curve = full_run.transfer("gold", "logistic", "clean", "last", relative=True)
    assert curve.dims == ("test", "layer") and float(curve.sel(test="clean", layer=2)) == 1.0
    assert [t["name"] for t in full_run.targets] == ["gold", "template"]
    reg = ds.reg.sel(target="gold", kind="logistic").values
    assert set(np.unique(reg[np.isfinite(reg)])) <= set(ProbeConfig().logistic_cs)
    assert (ds.hidden.sel(kind="mlp").values == 64).all()


def test_logistic_agrees_with_sklearn_on_the_same_splits(
    full_run: ProbeResult, planted: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    from priorscope.engine.probes.splits import assign_folds, group_keys
    from priorscope.engine.store import open_store

    store = open_store(planted)
    ds = full_run.to_xarray().load()
    table = store.examples()
    keys, by = group_keys(table.ids, table.metadata_keys(), table.column, "auto")
    fold = assign_folds(keys, 5, 0, by).fold
    gold = np.array([g[0] for g in table.gold])
    classes = sorted(set(gold))
    y = np.array([classes.index(g) for g in gold])
    for layer, train, test, red in [
        (1, "clean", "clean", "last"),
        (2, "clean", "total", "last"),
        (0, "clean", "clean", "last"),
        (2, "total", "total", "image_mean"),
    ]:
        x_tr = store.hidden(layer=layer, condition=train, reduction=red).astype(np.float64)
        x_te = store.hidden(layer=layer, condition=test, reduction=red).astype(np.float64)
        cs = ds.reg.sel(
            target="gold", kind="logistic", train=train, layer=layer, reduction=red
        ).values
        hits = 0
        for f in range(5):
            tr, te = fold != f, fold == f
            mu, sd = x_tr[tr].mean(0), x_tr[tr].std(0)
            model = LogisticRegression(C=float(cs[f]), max_iter=5000, tol=1e-8)
            model.fit((x_tr[tr] - mu) / sd, y[tr])
            hits += int((model.predict((x_te[te] - mu) / sd) == y[te]).sum())
        ours = float(
            ds.accuracy.sel(
                target="gold", kind="logistic", train=train, test=test, layer=layer, reduction=red
            )
        )
        assert abs(ours - hits / len(y)) <= 0.01, (layer, train, test, red, ours, hits / len(y))


def _arrays(result: ProbeResult) -> dict[str, np.ndarray]:
    ds = result.to_xarray().load()
    return {name: ds[name].values for name in ds.data_vars}


def _assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if x.dtype.kind == "f":
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), name  # bits, nan included
        else:
            assert np.array_equal(x, y), name


SMALL = ProbeConfig(
    targets=("gold", "template"),
    kinds="linear,mlp",
    layers="0,1,2",
    train=("clean", "total"),
    controls=True,
    permutations=2,
    control_column="id",
    **FAST,  # type: ignore[arg-type]
)


def _run_in_child(store: Path, out: Path) -> None:
    fit_probes(store, SMALL, str(out))


@pytest.mark.slow
def test_bitwise_identical_in_process_cluster_and_after_kill_and_resume(
    planted: Path, tmp_path: Path
) -> None:
    reference = _arrays(fit_probes(planted, SMALL, str(tmp_path / "inproc.zarr")))
    _assert_bitwise(
        reference, _arrays(fit_probes(planted, SMALL, str(tmp_path / "cluster.zarr"), workers=2))
    )

    out = tmp_path / "killed.zarr"
    child = multiprocessing.get_context("fork").Process(target=_run_in_child, args=(planted, out))
    child.start()
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and child.is_alive():
        try:
            done = int(np.asarray(zarr.open_group(str(out), mode="r")["probes/done"][:]).sum())
        except Exception:  # not created yet
            done = 0
        if done >= 1:
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join()
    plan, _, _ = prepare(planted, SMALL, str(out))
    left = pending(plan)
    assert 0 < len(left) < 6, f"expected a partly finished run, {len(left)} tasks left"
    finished = [p for p in (out / "probes" / "accuracy" / "c").rglob("*") if p.is_file()]
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    resumed = fit_probes(planted, SMALL, str(out))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished cells not refitted
    _assert_bitwise(reference, _arrays(resumed))


def test_resume_with_other_settings_is_refused(planted: Path, tmp_path: Path) -> None:
    cfg = ProbeConfig(
        targets=("gold",), kinds="ridge", layers="1", train=("clean",), test=("clean",)
    )
    fit_probes(planted, cfg, str(tmp_path / "r.zarr"))
    with pytest.raises(ConfigMismatchError, match="folds"):
        fit_probes(planted, ProbeConfig(**{**cfg.__dict__, "folds": 3}), str(tmp_path / "r.zarr"))


def test_cli_probe_and_info(planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from rich.console import Console

    from priorscope.cli import probe

    monkeypatch.setattr(probe, "console", Console(width=200))  # no column truncation
    app = typer.Typer()
    probe.register(app)
    runner = CliRunner()
    out = tmp_path / "cli.probes.zarr"
    res = runner.invoke(
        app,
        [
            "probe",
            str(planted),
            "--out",
            str(out),
            "--targets",
            "gold",
            "--kinds",
            "ridge",
            "--layers",
            "1,2",
            "--test",
            "clean",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "best layer" in res.output and "resid." in res.output and "gold" in res.output
    res = runner.invoke(app, ["probe", "info", str(out)])
    assert res.exit_code == 0, res.output
    assert "tasks done: 2 of 2" in res.output
    res = runner.invoke(
        app, ["probe", str(planted), "--targets", "nope", "--out", str(tmp_path / "x.zarr")]
    )
    assert res.exit_code != 0


def test_the_cpu_path_never_imports_gpu_libraries(planted: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from priorscope.engine.probes import ProbeConfig, fit_probes\n"
        f"fit_probes({str(planted)!r}, ProbeConfig(targets=('gold',), kinds='linear', layers='1', "
        f"train=('clean',), test=('clean',), backend='auto'), {str(tmp_path / 'g.zarr')!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cuml')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_progress_counts_tasks_and_a_finished_run_resumes_as_a_no_op(
    planted: Path, tmp_path: Path
) -> None:
    cfg = ProbeConfig(
        targets=("gold",), kinds="ridge", layers="1,2", train=("clean",), test=("clean",)
    )
    seen: list[tuple[int, int]] = []
    first = fit_probes(
        planted, cfg, str(tmp_path / "p.zarr"), progress=lambda i, n: seen.append((i, n))
    )
    assert seen == [(1, 2), (2, 2)]
    again: list[tuple[int, int]] = []
    second = fit_probes(
        planted, cfg, str(tmp_path / "p.zarr"), progress=lambda i, n: again.append((i, n))
    )
    assert again == [] and second.path == first.path
