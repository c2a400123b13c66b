"""The synthetic benchmark: determinism, planted prior rate, images that show what rows claim."""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import pytest
from scipy import ndimage

from priorscope.engine.data import synth
from priorscope.engine.data.synth import (
    PALETTE,
    PRIOR_OBJECTS,
    SHAPES,
    SynthConfig,
    build_row,
    generate,
    render,
    split_words,
    uninformative_image,
    with_uninformative_image,
    write_tsv,
)
from priorscope.engine.errors import UnknownNameError, UsageError


@pytest.fixture(scope="module")
def open_and_mc() -> tuple[list, list]:
    """Return the same 60 rows open-ended and multiple-choice (seed 3)."""
    return generate(SynthConfig(n=60, seed=3, size=64)), generate(
        SynthConfig(n=60, seed=3, size=64, mc=True)
    )


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    digests = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        path = write_tsv(generate(SynthConfig(n=25, seed=seed, size=48)), tmp_path / f"{name}.tsv")
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


@pytest.mark.parametrize("rate", [0.8, 0.3])
def test_planted_prior_rate_inside_binomial_interval(rate):
    n = 2000
    rows = [
        build_row(SynthConfig(n=n, seed=11, prior_rate=rate, templates=("prior",)), i)
        for i in range(n)
    ]
    canonical = sum(not r.counter_prior for r in rows)
    half_width = 1.96 * math.sqrt(rate * (1 - rate) / n)
    assert abs(canonical / n - rate) <= half_width
    for row in rows:
        assert row.canonical == PRIOR_OBJECTS[row.question.split()[-1].rstrip("?")]
        assert row.counter_prior == (row.answer != row.canonical)


def test_extreme_prior_rates_are_exact():
    always = [
        build_row(SynthConfig(n=50, prior_rate=1.0, templates=("prior",)), i) for i in range(50)
    ]
    never = [
        build_row(SynthConfig(n=50, prior_rate=0.0, templates=("prior",)), i) for i in range(50)
    ]
    assert not any(r.counter_prior for r in always)
    assert all(r.counter_prior for r in never)


def _colours_in(image) -> set[str]:
    pixels = {tuple(p) for p in np.asarray(image).reshape(-1, 3)}
    return {name for name, rgb in PALETTE.items() if rgb in pixels}


def test_rows_agree_with_their_scenes_and_pixels():
    cfg = SynthConfig(n=100, seed=2, size=96)
    for i in range(cfg.n):
        row = build_row(cfg, i)
        items = row.scene.items
        kinds = [item.kind for item in items]
        assert 1 <= len(items) <= 3
        assert _colours_in(render(row.scene)) == {item.color for item in items}
        if row.template == "color":
            target = row.question.split()[-1].rstrip("?")
            assert kinds.count(target) == 1
            assert items[kinds.index(target)].color == row.answer
        elif row.template == "count":
            target = row.question.split()[2][:-1]  # "how many stars are there?"
            assert str(kinds.count(target)) == row.answer
            mask = np.any(np.asarray(render(row.scene)) != synth.BACKGROUND, axis=-1)
            assert ndimage.label(mask)[1] == len(items)
        elif row.template == "presence":
            target = row.question.split()[-1].rstrip("?")
            assert (target in kinds) == (row.answer == "yes")
        elif row.template == "prior":
            assert items[0].color == row.answer and items[0].kind in PRIOR_OBJECTS
        else:
            assert row.template == "control" and not row.needs_image and row.answer == row.canonical
        assert row.needs_image == (row.template != "control")


def test_templates_cycle_and_metadata(open_and_mc):
    rows, _ = open_and_mc
    templates = [e.metadata["template"] for e in rows]
    assert templates[:10] == list(synth.TEMPLATES) * 2
    for e in rows:
        assert e.category == e.metadata["template"]
        assert e.metadata["counter_prior"] in ("0", "1") and e.metadata["needs_image"] in ("0", "1")
        assert e.image.size == (64, 64)
        assert len(e.answers) == 1 and " " not in e.answers[0]


def test_mc_options_point_at_the_open_answer(open_and_mc):
    open_rows, mc_rows = open_and_mc
    for plain, mc in zip(open_rows, mc_rows, strict=True):
        assert plain.image_bytes == mc.image_bytes
        label = mc.answers[0]
        assert mc.options[mc.option_labels.index(label)] == plain.answers[0]
        assert len(set(mc.options)) == len(mc.options)
        expected = 2 if plain.answers[0] in ("yes", "no") else 4
        assert len(mc.options) == expected
        if plain.metadata["template"] == "prior":
            assert plain.metadata["canonical"] in mc.options


def test_vocabulary_covers_every_word_and_matches_the_docs(open_and_mc):
    words: set[str] = set()
    for rows in open_and_mc:
        for e in rows:
            words.update(split_words(e.question))
            for text in (*e.options, *e.answers):
                words.update(split_words(text))
    assert words <= set(synth.VOCABULARY)
    assert all(w == w.lower() for w in synth.VOCABULARY)
    documented = re.search(r"are::\n\n(.*?)\n\n", synth.vocabulary.__doc__ or "", re.S)
    assert documented is not None
    assert tuple(documented.group(1).split()) == synth.VOCABULARY
    assert set(SHAPES) | set(PRIOR_OBJECTS) | set(PALETTE) <= set(synth.VOCABULARY)


def test_uninformative_images_carry_one_colour(open_and_mc):
    example = open_and_mc[0][3]
    pixels = np.asarray(example.image, dtype=np.float64)
    blank = np.asarray(uninformative_image(example.image, "mean"))
    assert blank.shape == pixels.shape
    assert np.all(blank == np.rint(pixels.reshape(-1, 3).mean(axis=0)))
    replaced = with_uninformative_image(example, "background")
    assert np.all(np.asarray(replaced.image) == synth.BACKGROUND)
    assert replaced.question == example.question and replaced.answers == example.answers
    with pytest.raises(UnknownNameError, match="Did you mean 'mean'"):
        uninformative_image(example.image, "meen")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "positive integer"),
        ({"n": 5, "prior_rate": 1.5}, r"prior_rate in \[0, 1\]"),
        ({"n": 5, "size": 8}, "between 32 and 4096"),
        ({"n": 5, "templates": ("colour",)}, "Did you mean 'color'"),
        ({"n": 5, "templates": ()}, "at least one template"),
    ],
)
def test_bad_configs_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SynthConfig(**kwargs)


def test_parse_templates():
    assert synth.parse_templates(" prior, control ") == ("prior", "control")
    with pytest.raises(UsageError, match="Did you mean 'count'"):
        synth.parse_templates("color,cuont")


# --------------------------------------------------------------------------- planted groups (issue 13)

# sha256 of `write_tsv` output computed with engine/data/synth.py as it was before the planted
# options existed (git HEAD 9bd3fb0): the default output must stay byte-identical.
BEFORE_PLANTED = {
    "default": "78205f556d5372e6ca047d59567678075457efbf9ac464749846bfee849ced79",
    "mc": "222a994321d2c839b7f58e8df4a76b3989d2ecefa2af026f855b8c2372a4f05a",
    "prior_color": "6b094500c95cdcef3b02029a03dce23bce16a25baea2b9c321d621bc9b8765f8",
}
PLANTED = {"suppressed": ("banana", "carrot"), "not_retrieved": ("triangle",)}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_output_is_byte_identical_to_before_the_planted_options(tmp_path):
    from priorscope.cli.main import main

    assert main(["synth", "--out", str(tmp_path / "cli.tsv")]) == 0  # n=500, seed=0
    assert _digest(tmp_path / "cli.tsv") == BEFORE_PLANTED["default"]
    mc = write_tsv(generate(SynthConfig(n=120, seed=3, mc=True)), tmp_path / "mc.tsv")
    assert _digest(mc) == BEFORE_PLANTED["mc"]
    cfg = SynthConfig(n=60, seed=1, size=64, prior_rate=0.3, templates=("prior", "color"))
    assert _digest(write_tsv(generate(cfg), tmp_path / "p.tsv")) == BEFORE_PLANTED["prior_color"]
    header = (tmp_path / "cli.tsv").read_text().split("\n", 1)[0].split("\t")
    assert "planted" not in header


def test_planted_column_names_each_rows_group():
    cfg = SynthConfig(n=700, seed=4, templates=(*synth.TEMPLATES, "detail"), **PLANTED)
    rows = generate(cfg)
    groups = {g: [e for e in rows if e.metadata["planted"] == g] for g in synth.PLANTED_GROUPS}
    assert all(len(v) >= 25 for v in groups.values()), {k: len(v) for k, v in groups.items()}
    assert sum(len(v) for v in groups.values()) == len(rows)
    for e in rows:
        template, group = e.metadata["template"], e.metadata["planted"]
        obj = split_words(e.question)[-2]
        expected = {
            "control": "control",
            "detail": "not_retrieved",
            "prior": "suppressed" if obj in PLANTED["suppressed"] else "prior",
        }.get(template, "used")
        assert group == expected, (e.question, group)
        if template == "color":  # colour questions never ask about a not-retrieved shape
            assert obj not in PLANTED["not_retrieved"]


def test_detail_rows_draw_the_not_retrieved_shape_alone_in_a_uniform_colour():
    cfg = SynthConfig(n=1600, seed=6, templates=("detail",), not_retrieved=("triangle", "star"))
    rows = [build_row(cfg, i) for i in range(cfg.n)]
    counts = {c: 0 for c in PALETTE}
    for row in rows:
        assert len(row.scene.items) == 1
        item = row.scene.items[0]
        assert (
            item.kind in ("triangle", "star") and row.question == f"what color is the {item.kind}?"
        )
        assert item.color == row.answer and _colours_in(render(row.scene)) == {row.answer}
        counts[row.answer] += 1
    # Uniform over 8 colours: each within 4 binomial standard errors of 200.
    sd = math.sqrt(cfg.n / 8 * 7 / 8)
    assert all(abs(k - cfg.n / 8) <= 4 * sd for k in counts.values()), counts


def test_suppressed_prior_rate_applies_to_the_suppressed_objects_only():
    cfg = SynthConfig(
        n=3000,
        seed=8,
        templates=("prior",),
        suppressed=("banana", "grape", "leaf"),
        suppressed_prior_rate=0.125,
    )
    rows = [build_row(cfg, i) for i in range(cfg.n)]
    for group, rate in (("suppressed", 0.125), ("prior", 0.8)):
        part = [r for r in rows if r.planted == group]
        canonical = sum(not r.counter_prior for r in part) / len(part)
        assert abs(canonical - rate) <= 4 * math.sqrt(rate * (1 - rate) / len(part)), group
    # Without planted options the same seed draws the same rows as before (no planted group).
    plain = build_row(SynthConfig(n=5, seed=8, templates=("prior",)), 3)
    assert (
        plain.planted == ""
        and plain.scene
        == build_row(
            SynthConfig(n=5, seed=8, templates=("prior",), suppressed=("banana",)), 3
        ).scene
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"suppressed": ("bananna",)}, "Did you mean 'banana'"),
        ({"not_retrieved": ("triangel",)}, "Did you mean 'triangle'"),
        ({"not_retrieved": SHAPES}, "at least one shape left"),
        ({"templates": ("detail",)}, "not_retrieved shapes"),
        ({"suppressed": ("banana",), "suppressed_prior_rate": 2.0}, "suppressed_prior_rate"),
    ],
)
def test_bad_planted_options_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SynthConfig(n=5, **kwargs)


def test_parse_names_and_detail_template():
    assert synth.parse_names(" banana, carrot ", PRIOR_OBJECTS, "prior object") == (
        "banana",
        "carrot",
    )
    assert synth.parse_names("", SHAPES, "shape") == ()
    assert synth.parse_templates("detail,prior") == ("detail", "prior")
    with pytest.raises(UsageError, match="Did you mean 'square'"):
        synth.parse_names("sqare", SHAPES, "shape")
