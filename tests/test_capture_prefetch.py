"""Batches prepared on a background thread (issue 15): same store, same on-bad handling.

Capture prepares the next batch (image decode, blur ladder, processor, token kinds) while the
current one runs on the model. The store must not depend on it: every array bitwise equal to a
capture that prepares each batch in turn, and an example whose image fails while being prepared
ahead must be skipped (or named) exactly as without prefetching.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from store_support import assert_stores_bitwise_equal, store_arrays

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.capture import run as capture_run
from priorscope.engine.data import synth
from priorscope.engine.errors import DataError
from priorscope.engine.models.registry import load_model
from priorscope.engine.store import open_store, verify


@pytest.fixture(scope="module")
def organism():
    return load_model("builtin:organism", device="cpu", dtype="float32")


def _bench(path: Path, *, broken: int | None = None) -> Path:
    """Write 10 synthetic rows in two sizes; row ``broken`` keeps half its PNG (fails to decode)."""
    rows = synth.generate(synth.SynthConfig(n=6, size=56, mc=True))
    rows += synth.generate(synth.SynthConfig(n=4, seed=3, size=84))
    rows = [
        dataclasses.replace(
            ex,
            id=f"r{i}",
            image_bytes=ex.image_bytes[: len(ex.image_bytes) // 2]
            if i == broken
            else ex.image_bytes,
        )
        for i, ex in enumerate(rows)
    ]
    return synth.write_tsv(rows, path)


def _capture(adapter, data: Path, out: Path, depth: int, monkeypatch, **extra) -> Path:
    monkeypatch.setattr(capture_run, "PREFETCH_BATCHES", depth)
    cfg = CaptureConfig(
        model="builtin:organism",
        data=str(data),
        out=str(out),
        ladder=(0.02, 0.08),
        total=True,
        none=True,
        full_seq=2,
        full_seq_layers="embed,1",
        batch_size=2,
        device="cpu",
        dtype="float32",
        hidden_dtype="float32",
        max_new_tokens=4,
        shard_examples=4,
        progress=False,
        **extra,
    )
    capture(cfg, adapter=adapter)
    return out


def test_prefetched_capture_is_bitwise_equal(organism, tmp_path: Path, monkeypatch) -> None:
    data = _bench(tmp_path / "bench.tsv")
    ahead = _capture(organism, data, tmp_path / "ahead.zarr", 1, monkeypatch)
    inline = _capture(organism, data, tmp_path / "inline.zarr", 0, monkeypatch)
    assert {"hidden", "outputs/raw", "fullseq/values"} <= set(store_arrays(ahead))
    assert_stores_bitwise_equal(ahead, inline)


def test_bad_image_prepared_ahead_is_skipped_as_without(organism, tmp_path, monkeypatch) -> None:
    data = _bench(tmp_path / "bench.tsv", broken=7)
    opts = {"data_options": {"on_bad": "skip"}}
    ahead = _capture(organism, data, tmp_path / "ahead.zarr", 1, monkeypatch, **opts)
    inline = _capture(organism, data, tmp_path / "inline.zarr", 0, monkeypatch, **opts)
    assert {"hidden", "outputs/raw", "fullseq/values"} <= set(store_arrays(ahead))
    assert_stores_bitwise_equal(ahead, inline)
    report = verify(ahead, deep=True)
    assert report.ok and report.n_committed == 10, report.problems
    assert len(report.skipped) == 1 and "id 'r7'" in report.skipped[0]
    assert "r7" not in list(open_store(ahead).examples().ids)


def test_bad_image_prepared_ahead_is_named(organism, tmp_path, monkeypatch) -> None:
    data = _bench(tmp_path / "bench.tsv", broken=7)
    with pytest.raises(DataError, match=r"'r7'.*--on-bad skip"):
        _capture(organism, data, tmp_path / "ahead.zarr", 1, monkeypatch)


def test_prefetcher_stays_one_batch_ahead(organism, tmp_path: Path) -> None:
    """While batch k is on the model, only batch k + 1 is being prepared (bounded memory)."""
    from priorscope.engine.capture.config import validate
    from priorscope.engine.capture.setup import open_capture_store, prepare

    data = _bench(tmp_path / "bench.tsv")
    cfg = validate(
        CaptureConfig(
            model="builtin:organism",
            data=str(data),
            out=str(tmp_path / "s.zarr"),
            ladder=(0.04,),
            batch_size=2,
            device="cpu",
            dtype="float32",
            progress=False,
        )
    )
    adapter, plan, prep = prepare(cfg, organism)
    group, layout = open_capture_store(cfg, adapter, plan, prep)
    job = capture_run._job(cfg, adapter, plan, group, layout)
    batches = [[0, 1], [2, 3], [4, 5]]
    fetch = capture_run.Prefetcher(job, batches, depth=1)
    try:
        assert len(fetch._pending) == 1  # the first batch only
        first = fetch.take()
        assert isinstance(first, capture_run.Prepared) and first.indices == [0, 1]
        assert len(fetch._pending) == 1 and fetch._next == 2  # the second is being prepared
        assert fetch.take().indices == [2, 3] and fetch.take().indices == [4, 5]
        assert fetch.take() is None
    finally:
        fetch.close()


def test_token_kinds_of_repeated_rows_equal_each_row_alone(organism) -> None:
    """Capture's batches repeat each prompt once per condition; kinds are computed once per
    distinct row and copied, so they must equal the kinds of every row encoded alone."""
    from priorscope.engine.models.base import TOKEN_IMAGE, TOKEN_PAD, TOKEN_TEXT

    rows = synth.generate(synth.SynthConfig(n=3, size=56, mc=True))
    rows += synth.generate(synth.SynthConfig(n=2, seed=5, size=56))  # open-ended: other tail
    tiled = rows * 3
    batch = organism.encode(tiled, [ex.image for ex in tiled])
    kinds = organism.token_kinds(batch)
    assert (kinds == TOKEN_PAD).any(), "rows of different lengths: some are left-padded"
    for r, ex in enumerate(tiled):
        alone = organism.token_kinds(organism.encode([ex], [ex.image]))[0]
        assert torch.equal(kinds[r, kinds.shape[1] - alone.shape[0] :], alone), ex.id
        assert (alone == TOKEN_IMAGE).any() and (alone == TOKEN_TEXT).any()
