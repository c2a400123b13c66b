"""``capture --scorer``: the same replies read by priorscope's rules or VLMEvalKit's (issue 16).

The organism answers a count with a digit. With the gold written as a number word and a single
gold answer, priorscope's normaliser makes them equal; VLMEvalKit scores one-gold VQA by a
case-insensitive exact match of the stripped reply, so the same reply is wrong there. Both
stores must hold the same replies, each scored as ``scoring.score`` scores it with its scorer,
and a resume must not mix the two.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from capture_support import capture_examples

from priorscope.engine import open_store
from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.data import load, scoring, synth
from priorscope.engine.errors import ConfigMismatchError, UsageError

WORDS = {"1": "one", "2": "two", "3": "three"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("scorer")
    rows = synth.generate(synth.SynthConfig(n=12, seed=5, size=84, templates=("count",)))
    worded = [dataclasses.replace(r, answers=tuple(WORDS[a] for a in r.answers)) for r in rows]
    ours = capture_examples(root, "ours", worded)
    theirs = capture_examples(root, "theirs", worded, scorer="vlmevalkit")
    return root / "ours.tsv", ours, theirs


def test_each_store_holds_its_scorers_reading_of_the_same_replies(stores) -> None:
    data, ours, theirs = stores
    by_id = {ex.id: ex for ex in load(data).examples}
    a, b = open_store(ours), open_store(theirs)
    raw = a.outputs("raw")
    np.testing.assert_array_equal(raw, b.outputs("raw"))
    ids = [str(i) for i in a.examples("id")]
    for store, scorer in ((a, "priorscope"), (b, "vlmevalkit")):
        score, answer = store.outputs("score"), store.outputs("answer")
        for row, example_id in enumerate(ids):
            for ci in range(raw.shape[1]):
                want = scoring.score(by_id[example_id], str(raw[row, ci]), scorer)
                assert score[row, ci] == np.float32(want.score), (scorer, example_id, ci)
                assert str(answer[row, ci]) == (want.answer or ""), (scorer, example_id, ci)
    clean = [c["name"] for c in a.attrs["conditions"]].index("clean")
    # The organism counts right on clean images: priorscope's reading scores it, VLMEvalKit's not.
    assert a.outputs("score")[:, clean].mean() >= 0.9
    assert b.outputs("score")[:, clean].max() == 0.0
    assert b.attrs["config"]["scorer"] == "vlmevalkit" and "scorer" not in a.attrs["config"]


def _config(data: Path, out: Path, **options: str) -> CaptureConfig:
    """Return the fixture stores' capture settings (clean and total) into ``out``."""
    from capture_support import DEFAULTS

    settings = {**DEFAULTS, "ladder": (), "batch_size": 32, "max_new_tokens": 2, **options}
    return CaptureConfig(model="builtin:organism", data=str(data), out=str(out), **settings)


def test_a_resume_with_the_other_scorer_is_refused(stores) -> None:
    data, ours, _ = stores
    cfg = _config(data, ours, scorer="vlmevalkit")
    with pytest.raises(ConfigMismatchError, match="scorer"):
        capture(cfg)
    with pytest.raises(UsageError, match="--scorer to be one of priorscope, vlmevalkit"):
        capture(dataclasses.replace(cfg, scorer="vlmeval"))


def test_cli_capture_takes_the_scorer(stores, tmp_path: Path) -> None:
    from priorscope.cli.main import main

    data, _, theirs = stores
    out = tmp_path / "cli.zarr"
    args = ["capture", "--data", str(data), "--out", str(out), "--ladder", "0.08", "--no-progress"]
    args += ["--dtype", "fp32", "--hidden-dtype", "float32", "--max-new-tokens", "2"]
    args += ["--batch-size", "32", "--scorer", "vlmevalkit"]
    assert main(args) == 0
    store, ref = open_store(out), open_store(theirs)
    names = [c["name"] for c in store.attrs["conditions"]]
    for name in ("clean", "total"):  # the fixture's store has these two conditions
        col, ref_col = names.index(name), [c["name"] for c in ref.attrs["conditions"]].index(name)
        np.testing.assert_array_equal(
            store.outputs("score")[:, col], ref.outputs("score")[:, ref_col]
        )
    assert store.attrs["config"]["scorer"] == "vlmevalkit"
    assert main([*args[:-1], "VLMEvalKit"]) == 2  # a usage error, as every bad option


def test_the_attention_kernel_is_part_of_a_stores_identity(stores) -> None:
    # sdpa (what auto picks on a CPU) is not recorded; another kernel is, and a resume that
    # would mix kernels is refused, naming it.
    data, ours, _ = stores
    assert "attn_implementation" not in open_store(ours).attrs["config"]
    assert open_store(ours).attrs["model"]["attn_implementation"] == "sdpa"
    eager = ours.parent / "eager.zarr"
    cfg = _config(data, eager, attn="eager")
    capture(cfg)
    assert open_store(eager).attrs["config"]["attn_implementation"] == "eager"
    with pytest.raises(ConfigMismatchError, match='attn_implementation: store has "eager"'):
        capture(dataclasses.replace(cfg, attn="auto"))
    with pytest.raises(UsageError, match="--attn to be one of auto, sdpa"):
        capture(dataclasses.replace(cfg, attn="flash"))
