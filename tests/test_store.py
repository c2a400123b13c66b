"""The store on its own: layout, bf16 round trip, shard writes, commit, reader, verify."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from priorscope.engine.errors import ConfigMismatchError
from priorscope.engine.store import (
    BatchRows,
    FullSeqLayout,
    FullSeqRows,
    ShardWriter,
    StoreLayout,
    choose_shard_examples,
    create_store,
    open_for_capture,
    open_store,
    rank_shards,
    schema,
    verify,
)
from priorscope.engine.store.dtypes import (
    bf16_bits_to_float32,
    decode,
    float32_to_bf16_bits,
    to_storage,
)
from priorscope.engine.store.layout import check_resume, config_differences, layout_from_attrs

CONDS = [
    {"name": "clean", "kind": "clean", "sigma": 0.0},
    {"name": "total", "kind": "total", "sigma": "inf"},
    {"name": "none", "kind": "none", "sigma": None},
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=64))
def test_bf16_bits_round_trip_matches_torch(values: list[float]) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    as_bf16 = x.to(torch.bfloat16)
    bits = to_storage(as_bf16)
    assert bits.dtype == np.uint16
    # Decoding the stored bits gives torch's own bf16 -> fp32 conversion, bit for bit.
    assert np.array_equal(
        bf16_bits_to_float32(bits).view(np.uint32), as_bf16.float().numpy().view(np.uint32)
    )
    # numpy-side rounding agrees with torch's round-to-nearest-even.
    assert np.array_equal(float32_to_bf16_bits(x.numpy()), bits)


def test_bf16_nan_survives() -> None:
    bits = float32_to_bf16_bits(np.array([np.nan, 1.0], dtype=np.float32))
    out = decode(bits, True)
    assert np.isnan(out[0]) and out[1] == 1.0


def test_choose_shard_examples_targets_64_mib() -> None:
    per_example = 37 * 9 * 3 * 2048 * 2  # Qwen2.5-VL-3B, 9 conditions, bf16
    s = choose_shard_examples(per_example, 100_000)
    assert s & (s - 1) == 0
    assert 32 * 2**20 <= s * per_example <= 64 * 2**20
    assert choose_shard_examples(10, 5) == 8  # never beyond the store's size rounded up
    assert choose_shard_examples(10**9, 5) == 1


@given(st.integers(1, 40), st.integers(1, 6))
def test_rank_shards_partition(n_shards: int, world: int) -> None:
    owned = [rank_shards(n_shards, r, world) for r in range(world)]
    flat = sorted(s for part in owned for s in part)
    assert flat == list(range(n_shards))


def _layout(n: int = 7, dtype: str = "bfloat16", fullseq: bool = True) -> StoreLayout:
    fs = (
        FullSeqLayout(
            examples=(1, 4),
            lengths=(5, 130),
            layers=(0, 1),
            conditions=("clean", "total"),
            rope_rows=3,
            token_block=64,
        )
        if fullseq
        else FullSeqLayout()
    )
    return StoreLayout(
        n_examples=n,
        conditions=("clean", "total", "none"),
        layers=(-1, 0, 1),
        reductions=("last", "image_mean"),
        d_model=8,
        candidates=("A", "B"),
        hidden_dtype=dtype,
        shard_examples=2,
        fullseq=fs,
    )


def _make(path, layout: StoreLayout) -> zarr.Group:
    n = layout.n_examples
    table = {
        "id": [f"e{i}" for i in range(n)],
        "question": ["q?"] * n,
        "source_row": list(range(n)),
    }
    attrs = {"conditions": CONDS, "config": {"ladder": [0.02], "model": "m"}}
    create_store(
        path,
        layout,
        attrs,
        table,
        np.ones((2, 8), np.float32),
        {"kind": "rmsnorm", "eps": 1e-6, "weight": np.arange(8.0)},
    )
    return open_for_capture(path)


def _rows(layout: StoreLayout, indices: list[int], seed: int) -> tuple[BatchRows, torch.Tensor]:
    rng = np.random.default_rng(seed)
    b, c = len(indices), len(layout.conditions)
    hidden = torch.from_numpy(rng.standard_normal((b, c, 3, 2, 8)).astype(np.float32))
    stored = hidden.to(torch.bfloat16)
    fullseq = {}
    for i in indices:
        if i in layout.fullseq.examples:
            n = layout.fullseq.lengths[layout.fullseq.examples.index(i)]
            vals = torch.randn(n, 2, 2, 8).to(torch.bfloat16)
            fullseq[i] = FullSeqRows(
                to_storage(vals).copy(),
                np.full(n, 2, np.int8),
                np.arange(n),
                np.tile(np.arange(n), (3, 1)),
            )
    rows = BatchRows(
        indices=np.asarray(indices),
        raw=np.full((b, c), "ans", dtype=object),
        answer=np.full((b, c), "A", dtype=object),
        extracted=np.ones((b, c), bool),
        score=rng.random((b, c)).astype(np.float32),
        cand_logprob=rng.standard_normal((b, c, 2)).astype(np.float32),
        hidden=to_storage(stored),
        fullseq=fullseq,
    )
    return rows, stored.float()


def test_store_round_trip_commit_and_reader(tmp_path) -> None:
    layout = _layout()
    group = _make(tmp_path / "s.zarr", layout)
    assert layout_from_attrs(dict(group.attrs)) == layout
    for name in (schema.HIDDEN, schema.OUT_SCORE, schema.FULLSEQ_VALUES, schema.COMMIT_DONE):
        assert tuple(group[name].metadata.dimension_names) == schema.DIMS[name]
    assert group[schema.HIDDEN].dtype == np.uint16 and group[schema.HIDDEN].attrs["bf16_bits"]
    writer = ShardWriter(group, layout, rank_shards(layout.n_shards, 0, 1), max_pending=1)
    expected = {}
    # Batches straddle shard boundaries; a shard is written only once all its rows arrived.
    for seed, batch in enumerate(([0, 1, 2], [3], [5, 6])):
        rows, ref = _rows(layout, batch, seed)
        expected.update({i: ref[j] for j, i in enumerate(batch)})
        writer.put(rows)
    reader = open_store(tmp_path / "s.zarr")
    # Example 4 is missing: shard 2 (examples 4, 5) must stay uncommitted.
    rows, ref = _rows(layout, [4], 9)
    expected[4] = ref[0]
    deadline = time.time() + 10
    while reader.committed().sum() < 5 and time.time() < deadline:
        time.sleep(0.02)
    assert reader.committed().tolist() == [True] * 4 + [False, False, True]
    assert not verify(tmp_path / "s.zarr").ok
    writer.put(rows)
    writer.close()
    assert reader.is_complete() and verify(tmp_path / "s.zarr", deep=True).ok
    got = reader.hidden()
    want = torch.stack([expected[i] for i in range(7)]).numpy()
    assert np.array_equal(got, want)  # bf16 bits round-trip exactly
    assert np.array_equal(
        reader.hidden(layer="embed", condition="total", reduction="last"), want[:, 1, 0, 0]
    )
    assert np.array_equal(np.asarray(reader.hidden_dask()[:, :, 2].compute()), want[:, :, 2])
    fs = reader.fullseq(4)
    assert fs.values.shape == (130, 2, 2, 8) and fs.position_ids.shape == (3, 130)
    assert list(reader.examples().ids) == [f"e{i}" for i in range(7)]
    # Columns the writer left out hold their defaults; source_row was given.
    assert reader.examples().column("source_row").tolist() == list(range(7))
    assert set(reader.examples().benchmark) == {""}


def test_fullseq_offsets_are_block_aligned() -> None:
    fs = _layout().fullseq
    assert fs.offsets == (0, 64, 64 + 192)
    assert all(o % fs.token_block == 0 for o in fs.offsets)


def test_resume_with_other_config_is_refused(tmp_path) -> None:
    group = _make(tmp_path / "s.zarr", _layout(fullseq=False))
    check_resume(group, {"ladder": [0.02], "model": "m"}, tmp_path)
    with pytest.raises(
        ConfigMismatchError, match=r"ladder: store has \[0.02\], this run asks for \[0.04\]"
    ):
        check_resume(group, {"ladder": [0.04], "model": "m"}, tmp_path)
    assert config_differences({"a": 1}, {"a": 1, "b": 2}) == [
        'b: store has "<absent>", this run asks for 2'
    ]


def test_verify_reports_uncommitted_ranges(tmp_path) -> None:
    _make(tmp_path / "s.zarr", _layout(fullseq=False))
    report = verify(tmp_path / "s.zarr")
    assert not report.ok
    assert "7 of 7 examples are not committed (0-6)" in report.problems[0]
    json.dumps(report.problems)


@settings(max_examples=8, deadline=None)
@given(
    st.sampled_from([(4, 3, 5, 2, 8), (8, 2, 3, 16), (6, 4)]),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["uint16", "float16", "float32", "int64"]),
)
def test_fast_shard_write_reads_back_through_zarr(tmp_path_factory, shape, seed, dtype) -> None:
    from priorscope.engine.store.shardio import write_region

    rng = np.random.default_rng(seed)
    inner = (shape[0] // 2, *(1 for _ in shape[1:-1]), shape[-1])
    path = tmp_path_factory.mktemp("shardio")
    arrays = [
        zarr.create_array(
            str(path / name),
            shape=(3 * shape[0] - 1, *shape[1:]),
            chunks=inner,
            shards=shape,
            dtype=dtype,
            compressors=None,
            filters=None,
            fill_value=0,
        )
        for name in ("fast", "zarr")
    ]
    full = (rng.standard_normal((3 * shape[0] - 1, *shape[1:])) * 1000).astype(dtype)
    for start in range(0, full.shape[0], shape[0]):
        block = full[start : start + shape[0]]  # the last block is a partial edge shard
        write_region(arrays[0], start, block)
        arrays[1][start : start + shape[0]] = block
    fast = zarr.open_array(str(path / "fast"), mode="r")
    assert np.array_equal(fast[...], full)  # zarr decodes our shards (index CRC checked)
    assert np.array_equal(fast[...], arrays[1][...])
    # One inner chunk read goes through the index too.
    assert np.array_equal(fast[: inner[0], ..., : inner[-1]], full[: inner[0], ..., : inner[-1]])
