"""GPU backends of the probes: the same torch solvers on CUDA, and cuML's logistic regression.

Both must land on the CPU run's cells up to floating-point reordering (not bitwise: GPU
reductions differ). Run on a CUDA machine by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from priorscope.engine.errors import UsageError
from priorscope.engine.probes import ProbeConfig, fit_probes
from priorscope.engine.probes.synthetic import PlantedStore, write_planted_store

PLANT = PlantedStore(
    n=300,
    d_model=48,
    layers=(-1, 0, 1),
    reductions=("last",),
    conditions=("clean", "total"),
    signal={(1, "last", "clean"): 1.5},
    shard_examples=64,
)
CFG = dict(
    targets=("gold", "template"), train=("clean",), mlp_max_epochs=20, mlp_batch=32, mlp_lr=3e-3
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_planted_store(tmp_path_factory.mktemp("gpu") / "p.zarr", PLANT)


@pytest.mark.gpu
def test_cuda_backend_matches_cpu(planted: Path, tmp_path: Path) -> None:
    cpu = fit_probes(
        planted, ProbeConfig(kinds="linear,mlp", backend="cpu", **CFG), str(tmp_path / "cpu.zarr")
    )  # type: ignore[arg-type]
    gpu = fit_probes(
        planted, ProbeConfig(kinds="linear,mlp", backend="cuda", **CFG), str(tmp_path / "gpu.zarr")
    )  # type: ignore[arg-type]
    a, b = cpu.to_xarray().load(), gpu.to_xarray().load()
    for kind in ("ridge", "logistic"):
        np.testing.assert_allclose(
            a.accuracy.sel(kind=kind).values,
            b.accuracy.sel(kind=kind).values,
            atol=2 / PLANT.n,
            rtol=0,
        )
    # MLPs follow another reduction order on the GPU; they must still find the planted signal.
    acc = b.accuracy.sel(target="gold", kind="mlp", train="clean", test="clean", reduction="last")
    assert float(acc.sel(layer=1)) > 0.9 and float(acc.sel(layer=-1)) < 0.45


@pytest.mark.gpu
def test_cuml_backend_matches_the_torch_solver(planted: Path, tmp_path: Path) -> None:
    cfg = ProbeConfig(kinds="logistic", backend="cuml", **CFG)  # type: ignore[arg-type]
    try:
        import cuml  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="cuML"):
            fit_probes(planted, cfg, str(tmp_path / "cuml.zarr"))
        return
    ours = fit_probes(
        planted, ProbeConfig(kinds="logistic", backend="cpu", **CFG), str(tmp_path / "cpu.zarr")
    )  # type: ignore[arg-type]
    theirs = fit_probes(planted, cfg, str(tmp_path / "cuml.zarr"))
    diff = np.abs(ours.to_xarray().accuracy.values - theirs.to_xarray().accuracy.values)
    assert np.nanmax(diff) <= 0.02
