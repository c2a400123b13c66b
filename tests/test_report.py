"""The HTML report: self-contained, every number in its JSON, rendered by a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from store_support import synth_answer_store

from priorscope.engine.data import Example, synth
from priorscope.engine.report import ReportConfig, write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
N = 40


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)

    def answer_of(i: int, e: Example) -> list[str]:
        # A model that sees the image until blur@0.08 on half the items, then guesses "red";
        # about 5% of its answers cannot be extracted.
        g = e.answers[0]
        row = [g, g, g if i % 2 else "red", "red", "red"]
        return ["" if rng.random() < 0.05 else a for a in row]

    store = synth_answer_store(
        root,
        synth.generate(synth.SynthConfig(n=N, seed=11, size=64)),
        ladder=(0.02, 0.08),
        none=True,
        answer_of=answer_of,
        attrs={
            "model": {"path": "builtin:test", "family": "qwen2_5_vl"},
            "prompt_template": "<|im_start|>user <image> {question}",
        },
    )
    cfg = ReportConfig(n_flipped=2, n_invariant=2)
    return write_report(store, root / "out" / "report.html", cfg)


def test_files_and_json_hold_every_number(report) -> None:
    assert report.html.is_file() and report.json.is_file()
    assert [p.name for p in report.pngs] == [
        "report_accuracy.png",
        "report_invariance.png",
        "report_flips.png",
    ]
    for p in report.pngs:
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    doc = json.loads(report.json.read_text())
    groups = doc["decay"]["groups"]
    assert {g["category"] for g in groups} == {None, *synth.TEMPLATES}
    overall = next(g for g in groups if g["category"] is None)
    # The JSON numbers are the DecayResult's numbers, not a re-derivation.
    acc = report.decay.group("synth").values["accuracy"]
    assert overall["metrics"]["accuracy"]["blur@0.08"]["value"] == pytest.approx(acc[2])
    assert doc["later_analyses"] == {k: False for k in doc["later_analyses"]}
    assert doc["provenance"]["model"]["path"] == "builtin:test"


def test_html_is_self_contained_with_tables_strips_and_not_computed(report) -> None:
    html = report.html.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    assert html.count("data:image/png;base64,") == 3 + 4 * 5  # 3 figures, 4 items x 5 tiles
    assert "Not computed" in html and html.count("notcomputed") >= 2
    assert "builtin:test" in html and "&lt;image&gt; {question}" in html
    assert "blind-answ." in html and "flipped" in html and "invariant" in html
    assert "synth/prior" in html


def test_strip_tiles_are_the_reblurred_dataset_images(report) -> None:
    import base64
    import io

    html = report.html.read_text()
    tiles = re.findall(
        r'alt="([^"]+) (clean|blur@0\.02|total)" src="data:image/png;base64,'
        r'([^"]+)"',
        html,
    )
    by_level = {}
    for ident, level, data in tiles:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            by_level.setdefault(ident, {})[level] = np.asarray(im.convert("RGB"), dtype=float)
    ident, levels = next(iter(by_level.items()))
    clean, total = levels["clean"], levels["total"]
    assert clean.std() > 10  # shapes on a background
    assert total.reshape(-1, 3).std(axis=0).max() < 1.0  # one flat colour: the image mean
    np.testing.assert_allclose(total[0, 0], clean.reshape(-1, 3).mean(axis=0), atol=3)


def test_renders_in_headless_chromium_with_its_images(report, tmp_path) -> None:
    probe = tmp_path / "probe.html"
    # The same document plus a script that records, after load, how many images decoded.
    script = (
        "<script>window.addEventListener('load',()=>{const im=[...document.images];"
        "document.body.dataset.total=im.length;document.body.dataset.loaded="
        "im.filter(i=>i.complete&&i.naturalWidth>0).length;"
        "document.body.dataset.tables=document.querySelectorAll('table').length;});"
        "</script></body>"
    )
    probe.write_text(report.html.read_text().replace("</body>", script))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    total = int(re.search(r'data-total="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-loaded="(\d+)"', dom).group(1))
    assert total == 23 and loaded == total
    assert int(re.search(r'data-tables="(\d+)"', dom).group(1)) >= 3
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,2400", report.html.as_uri()],
        capture_output=True,
        timeout=90,
        check=True,
    )
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=float)
    assert pixels.std() > 5  # not a blank page


def test_later_analyses_are_found_beside_the_store(report, tmp_path) -> None:
    from priorscope.engine.analysis import DecayConfig
    from priorscope.engine.store import ArraySpec, GroupSpec, open_results, results_path

    store = report.decay.store
    spec = GroupSpec(
        "report_test_probes",
        "tests",
        (ArraySpec("accuracy", ("layer",), "float32"),),
        "probe accuracy by layer",
        store_kind="probes",
    )
    open_results(results_path(store, "probes"), spec)
    cfg = ReportConfig(decay=DecayConfig(n_boot=20), n_flipped=0, n_invariant=0)
    again = write_report(store, tmp_path / "again.html", cfg)
    present = json.loads(again.json.read_text())["later_analyses"]
    assert present == {
        "Probes: where is the answer decodable?": True,
        "Layer replacement: where is the visual evidence lost?": False,
        "Logit lens: where does the answer take the lead?": False,
    }
    # Found, but written by another group: said, not drawn, and the report still renders.
    html = again.html.read_text()
    assert "Present but not drawn" in html and "priorscope probe STORE" in html
