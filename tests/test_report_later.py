"""The report draws probes, layer replacement and logit lens from results stores beside a capture.

One real organism capture (full sequences), then the three analyses written to their default
paths; the report must find and draw each, and the results read back equal to what was written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from patch_support import organism_capture
from PIL import Image

from priorscope.engine.analysis import DecayConfig
from priorscope.engine.models.registry import load_model
from priorscope.engine.patch import PatchConfig, patch
from priorscope.engine.patch.read import read_lens, read_patch
from priorscope.engine.patch.readout import localise_config
from priorscope.engine.patch.run import lens
from priorscope.engine.probes import ProbeConfig, fit_probes
from priorscope.engine.report import ReportConfig, write_report
from priorscope.engine.report.later import LATER_ANALYSES
from priorscope.engine.store import results_path

QUICK = ReportConfig(decay=DecayConfig(n_boot=20), n_flipped=1, n_invariant=1)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("later")
    adapter = load_model("builtin:organism", dtype="float32")
    store, _ = organism_capture(folder, adapter, full_seq=6)
    cfg = PatchConfig(examples=6, out=results_path(store, "patch"))
    patched = patch(store, cfg)
    lensed = lens(store, out=results_path(store, "lens"))
    probes = fit_probes(
        store,
        ProbeConfig(targets=("gold",), kinds=("logistic",), sites=("last",), folds=2, min_class=2),
        results_path(store, "probes"),
    )
    return store, patched, lensed, probes


def test_results_read_back_equal_to_what_was_written(analysed) -> None:
    store, patched, lensed, _ = analysed
    again = read_patch(results_path(store, "patch"))
    assert again.direction_names == patched.direction_names
    assert again.groups == patched.groups and again.modes == patched.modes
    assert again.layers == patched.layers and again.candidates == patched.candidates
    np.testing.assert_array_equal(again.rows, patched.rows)
    assert set(again.exact) == set(patched.exact)
    for name, values in patched.exact.items():
        np.testing.assert_array_equal(again.exact[name], values)
    assert again.config.source == patched.config.source
    assert again.config.directions == patched.config.directions

    back = read_lens(results_path(store, "lens"))
    assert back.conditions == lensed.conditions and back.layers == lensed.layers
    for name in ("margin", "top", "first_lead", "settled", "final"):
        np.testing.assert_array_equal(getattr(back, name), getattr(lensed, name))
    np.testing.assert_array_equal(back.targets.gold, lensed.targets.gold)
    assert back.check_error == pytest.approx(lensed.check_error, rel=1e-6, nan_ok=True)


def test_report_draws_every_later_analysis(analysed, tmp_path) -> None:
    store, patched, _, probes = analysed
    result = write_report(store, tmp_path / "r.html", QUICK)
    html = result.html.read_text()
    doc = json.loads(result.json.read_text())
    assert doc["later_analyses"] == {title: True for title in LATER_ANALYSES.values()}
    assert "Not computed" not in html and "Present but not drawn" not in html
    for title in LATER_ANALYSES.values():
        assert f"<h2>{title}</h2>" in html
    assert html.count("<figure") >= 3 + 3  # decay figures, probes, >= 1 heatmap, lens
    names = {p.name for p in result.pngs}
    assert {"r_probes.png", "r_lens.png"} <= names
    assert any(n.startswith("r_patch_") for n in names)
    for p in result.pngs:
        with Image.open(p) as im:
            assert im.size[0] > 200 and im.size[1] > 150
    later = doc["later"]
    assert later["patch"]["directions"] == patched.direction_names
    assert later["patch"]["n_examples"] == len(patched.rows)
    assert later["lens"]["n_examples"] == 40 and len(later["lens"]["layers"]) >= 4
    assert later["probes"]["targets"][0]["name"] == "gold"
    drawn = probes.to_xarray()["accuracy"].values
    assert np.isfinite(drawn).sum() > 0  # the panel has lines to draw, not only its axes


def test_missing_results_say_how_to_compute_them(tmp_path) -> None:
    from priorscope.engine.store import open_store

    adapter = load_model("builtin:organism", dtype="float32")
    store, _ = organism_capture(tmp_path, adapter, full_seq=0)
    result = write_report(open_store(store), tmp_path / "r.html", QUICK)
    html = result.html.read_text()
    assert html.count("Not computed") == len(LATER_ANALYSES)
    assert "priorscope lens STORE" in html and "priorscope probe STORE" in html
    assert json.loads(result.json.read_text())["later"] == {}


def test_report_reads_out_kept_states(tmp_path) -> None:
    adapter = load_model("builtin:organism", dtype="float32")
    store, _ = organism_capture(tmp_path, adapter, full_seq=24)
    patch(store, localise_config(out=results_path(store, "patch")), adapter=adapter)
    result = write_report(store, tmp_path / "r.html", QUICK)
    html = result.html.read_text()
    assert "Read-out of &#x27;gold&#x27; at the answer position" in html
    assert "r_patch_readout.png" in {p.name for p in result.pngs}
    readout = json.loads(result.json.read_text())["later"]["patch"]["readout"]
    # Rows whose gold class has fewer than two examples are left out of the read-out.
    assert readout["kept_layers"] == [-1, 0, 1, 2, 3] and 20 <= readout["n"] <= 24
    # The unpatched clean run reads the gold answer at its last layer better than chance.
    assert readout["unpatched"]["clean"][-1] > readout["majority"]
