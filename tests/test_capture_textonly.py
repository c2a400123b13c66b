"""Text-only rows are captured under 'none' only: their image conditions are marked void."""

from __future__ import annotations

import dataclasses

import numpy as np

from priorscope.engine.data import synth
from priorscope.engine.store import open_store


def test_text_only_rows_hold_none_only_and_image_rows_are_untouched(tmp_path) -> None:
    from priorscope.cli.main import main

    rows = synth.generate(synth.SynthConfig(n=6, seed=4, size=84))
    rows = [dataclasses.replace(ex, id=f"t{i}") for i, ex in enumerate(rows)]
    mixed = [
        dataclasses.replace(ex, image_bytes=None) if i in (1, 4) else ex
        for i, ex in enumerate(rows)
    ]
    args = ["capture", "--model", "builtin:organism", "--ladder", "0.04", "--none"]
    args += ["--full-seq", "2", "--batch-size", "8", "--device", "cpu", "--dtype", "fp32"]
    args += ["--hidden-dtype", "float32", "--max-new-tokens", "2", "--no-progress"]
    images_only = [ex for i, ex in enumerate(rows) if i not in (1, 4)]
    data = synth.write_tsv(mixed, tmp_path / "mixed.tsv")
    # A TSV row without an image is an error unless the user says text-only (the data flags).
    assert main([*args, "--data", str(data), "--out", str(tmp_path / "x.zarr")]) == 1
    out = tmp_path / "m.zarr"
    assert (
        main([*args, "--data", str(data), "--out", str(out), "--missing-image", "text-only"]) == 0
    )
    full = tmp_path / "full.zarr"
    assert (
        main(
            [
                *args,
                "--data",
                str(synth.write_tsv(images_only, tmp_path / "img.tsv")),
                "--out",
                str(full),
            ]
        )
        == 0
    )
    store, ref = open_store(out), open_store(full)
    ids = list(store.examples().ids)
    text = np.array([i in ("t1", "t4") for i in ids])
    none = store.condition_index("none")
    image_conds = [c for c in range(len(store.condition_names)) if c != none]
    score, hidden = store.outputs("score"), store.hidden()
    raw = store.outputs("raw")
    assert np.isnan(score[text][:, image_conds]).all()
    assert np.isnan(hidden[text][:, image_conds]).all()
    assert (raw[text][:, image_conds] == "").all()
    assert np.isfinite(score[text][:, none]).all() and (raw[text][:, none] != "").all()
    assert np.isfinite(hidden[text][:, none][..., store.reductions.index("last"), :]).all()
    # Image rows are what a capture of the image rows alone gives (the batches never mix).
    ref_ids = list(ref.examples().ids)
    for row, i in enumerate(ids):
        if not text[row]:
            np.testing.assert_array_equal(hidden[row], ref.hidden()[ref_ids.index(i)])
    _check_verify_and_info(out, full, store.n_examples)


def _check_verify_and_info(out, full, n_examples: int) -> None:
    """The mixed store verifies complete (deep too) and info counts its text-only rows."""
    import zarr

    from priorscope.engine.store import schema
    from priorscope.engine.store.verify import info, verify

    for deep in (False, True):
        report = verify(out, deep=deep)
        assert report.ok, report.problems
        assert report.n_committed == n_examples
    assert info(out)["text_only_examples"] == 2
    assert info(full)["text_only_examples"] == 0
    # A NaN planted in an image row is still a finding, in log-probs and in hidden states.
    store = open_store(out)
    ids = list(store.examples().ids)
    image_row = ids.index("t0")
    group = zarr.open_group(str(out), mode="r+")
    cand = group[schema.OUT_CAND_LOGPROB]
    saved = cand[image_row, 0, 0]
    cand[image_row, 0, 0] = np.nan
    assert any("candidate log-probs" in p for p in verify(out).problems)
    cand[image_row, 0, 0] = saved
    assert verify(out, deep=True).ok
    hidden = group[schema.HIDDEN]
    block = hidden[image_row : image_row + 1]
    planted = block.copy()
    planted[0, 0, 0, 0, 0] = np.nan
    hidden[image_row : image_row + 1] = planted
    assert verify(out).ok  # shallow verify leaves hidden states unread
    assert any("hidden" in p for p in verify(out, deep=True).problems)
    # A text-only row's void image condition that holds a finite value is a mix, not void.
    text_row = ids.index("t1")
    hidden[image_row : image_row + 1] = block
    block = hidden[text_row : text_row + 1]
    none = store.condition_index("none")
    other = next(c for c in range(len(store.condition_names)) if c != none)
    mixed = block.copy()
    mixed[0, other, 0, 0, 0] = 0.5
    hidden[text_row : text_row + 1] = mixed
    assert any("hidden" in p for p in verify(out, deep=True).problems)
    hidden[text_row : text_row + 1] = block
    assert verify(out, deep=True).ok
