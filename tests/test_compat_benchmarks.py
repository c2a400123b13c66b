"""The compatibility table, line by line: each benchmark layout loads (or is refused) as documented.

Every row of engine/data/COMPATIBILITY.md's table is one Layout in tests/compat_layouts.py: a small
file in the benchmark's documented layout. Loading it must give the documented examples (count,
gold answers, text-only and multi-image rows, derived ids) scored the documented way, with
sample replies scored as the reference harness would score them.
"""

from __future__ import annotations

import re

import pytest
from compat_layouts import LAYOUTS, Layout

from priorscope.engine.data import load, scoring
from priorscope.engine.errors import DataError


def _scoring_kind(example) -> str:
    if not example.answers:
        return "unscored"
    if example.is_multiple_choice:
        return "choice"
    golds = [scoring.normalize_answer(a) for a in example.answers]
    if example.metric == "vqa" and all(g in ("yes", "no") for g in golds):
        return "yes/no"
    return example.metric


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda la: f"{la.benchmark}-{la.format}")
def test_layout_loads_and_scores_as_documented(tmp_path, layout: Layout):
    path = layout.build(tmp_path)
    if layout.refused:
        with pytest.raises(DataError) as caught:
            load(path, **layout.load)
        assert re.search(layout.refused, str(caught.value)), str(caught.value)
        assert re.search(r"--column|--format|Pass", str(caught.value))  # says what to do
        return
    result = load(path, **layout.load)
    examples = result.examples
    assert result.format == layout.format and not result.skipped
    assert len(examples) == layout.n
    assert [e.answers for e in examples[: len(layout.golds)]] == list(layout.golds)
    assert _scoring_kind(examples[0]) == layout.scoring
    # The rule capture records per example (examples/metric) is the one the test derives.
    assert [scoring.rule(e) for e in examples] == [_scoring_kind(e) for e in examples]
    assert sum(not e.has_image for e in examples) == layout.text_only
    assert sum(len(e.images) > 1 for e in examples) == layout.multi_image
    assert result.n_derived_ids == layout.derived_ids
    assert len({e.id for e in examples}) == len(examples)
    for index, reply, expected in layout.replies:
        assert scoring.score(examples[index], reply).score == pytest.approx(expected, rel=1e-9)
    vocabulary = scoring.answer_vocabulary(examples)
    for example in examples:
        if example.answers and (example.is_multiple_choice or vocabulary):
            assert scoring.candidates(example, vocabulary)  # capture can build candidates


def test_every_benchmark_of_the_issue_has_a_line():
    wanted = {
        "MMBench",
        "MME",
        "POPE",
        "HallusionBench",
        "SEED-Bench",
        "MMStar",
        "ScienceQA",
        "AI2D",
        "TextVQA",
        "ChartQA",
        "MMMU",
        "GQA",
        "VizWiz",
        "MM-Vet",
    }
    assert wanted <= {layout.benchmark for layout in LAYOUTS}
    for name in wanted:
        formats = {la.format for la in LAYOUTS if la.benchmark == name}
        assert "vlmevalkit-tsv" in formats or name in ("BLINK",), name
        assert "hf-parquet" in formats, name


def test_mmmu_open_row_and_multi_image_bytes(tmp_path):
    layout = next(la for la in LAYOUTS if la.benchmark == "MMMU" and la.format == "hf-parquet")
    first, second = load(layout.build(tmp_path)).examples
    assert first.options == ("first", "second", "neither") and len(first.images) == 2
    assert second.options == () and second.answers == ("12.5",) and len(second.images) == 1
    assert [im.size for im in first.decoded_images()] == [(8, 8), (8, 8)]
    assert first.image_bytes == first.images[0] and first.extra_images == first.images[1:]


def test_mmstar_options_come_out_of_the_question(tmp_path):
    layout = next(la for la in LAYOUTS if la.benchmark == "MMStar" and la.format == "hf-parquet")
    result = load(layout.build(tmp_path))
    first = result.examples[0]
    assert first.question == (
        "Which option describe the object relationship in the image correctly?"
    )
    assert first.options[0] == "The suitcase is on the book."
    assert first.options[3] == "The suitcase is beneath the book."
    assert result.examples[1].options == ("red", "blue", "green", "white")
    assert any("from the question text" in note for note in result.notes)


def test_the_readme_table_has_a_line_per_tested_benchmark():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Benchmark files") :]
    rows = {
        line.split("|")[1].strip()
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    }
    assert {layout.benchmark for layout in LAYOUTS} <= rows
