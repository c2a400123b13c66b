"""`priorscope lens` and `priorscope patch` end to end, and the report figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from patch_support import organism_capture
from typer.testing import CliRunner

from priorscope.cli.patch import register
from priorscope.engine.data import synth
from priorscope.engine.errors import UsageError
from priorscope.engine.models.registry import load_model
from priorscope.engine.patch import PatchConfig, logit_lens, patch
from priorscope.engine.patch.plots import lens_section, patch_section
from priorscope.engine.patch.schema import LENS_GROUP, PATCH_GROUP
from priorscope.engine.store import open_results, open_store

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    adapter = load_model("builtin:organism", dtype="float32")
    cfg = synth.SynthConfig(n=10, seed=2, size=84)
    path, _ = organism_capture(tmp_path_factory.mktemp("cli"), adapter, full_seq=4, synth_cfg=cfg)
    return path


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_lens_command(store_path: Path, app: typer.Typer):
    result = CliRunner().invoke(app, ["lens", str(store_path)])
    assert result.exit_code == 0, result.output
    assert "Last-layer check" in result.output
    out = store_path.parent / "store.lens.zarr"
    margin = open_results(out, LENS_GROUP, mode="r").read("margin")
    np.testing.assert_array_equal(margin, logit_lens(open_store(store_path)).margin)


def test_patch_command(store_path: Path, app: typer.Typer, tmp_path: Path):
    out = tmp_path / "p.zarr"
    args = ["patch", str(store_path), "--layers", "embed,3", "--groups", "image,last"]
    args += ["--mode", "state", "--examples", "2", "--one-way", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "normalised effect" in result.output
    rs = open_results(out, PATCH_GROUP, mode="r")
    assert rs.read("effect").shape == (1, 2, 2, 2, 1)
    assert rs.attrs["config"]["groups"][0]["name"] == "image"


def test_patch_command_refuses_the_same_source_and_target(store_path: Path, app: typer.Typer):
    result = CliRunner().invoke(app, ["patch", str(store_path), "--source", "clean"])
    assert isinstance(result.exception, UsageError)
    assert "different --source and --target" in str(result.exception)


def test_estimate_without_gradients_says_how_to_get_them(store_path: Path, app: typer.Typer):
    result = CliRunner().invoke(app, ["patch", str(store_path), "--estimate"])
    assert result.exception is not None
    assert "--grad" in str(result.exception)


def test_report_figures(store_path: Path):
    store = open_store(store_path)
    adapter = load_model("builtin:organism", dtype="float32")
    result = patch(store, PatchConfig(layers="embed,3", modes=("state",)), adapter=adapter)
    html, pngs = patch_section(result, store.examples())
    assert pngs and all(png.startswith(PNG) for png in pngs.values())
    assert html.count("<figure>") == len(pngs) and "data:image/png;base64," in html
    html, pngs = lens_section(logit_lens(store), store.examples())
    assert list(pngs) == ["lens.png"] and pngs["lens.png"].startswith(PNG)
    assert "Last-layer check" in html
