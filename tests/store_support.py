"""Build real capture stores for tests without a model: the store's own writer, known values.

``half_written_store`` commits some shards and leaves others as a crash would: one shard never
started (fill values) and one "torn" shard whose hidden states are on disk but whose other
arrays and commit flag are not (what the ``hidden`` fault point of the writer leaves behind).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine import store as ps
from priorscope.engine.store.dtypes import decode, float32_to_bf16_bits, zarr_dtype
from priorscope.engine.store.layout import array
from priorscope.engine.store.shardio import write_region

CONDITIONS = [
    {"name": "clean", "kind": "clean", "sigma": 0.0},
    {"name": "blur@0.04", "kind": "blur", "sigma": 0.04},
    {"name": "total", "kind": "total", "sigma": "inf"},
]


@dataclass
class BuiltStore:
    """A store on disk and what was written into it (hidden decoded to float32)."""

    path: Path
    layout: ps.StoreLayout
    hidden: np.ndarray  # [example, condition, layer, reduction, d_model] float32, every row
    score: np.ndarray  # [example, condition] float32
    answer: np.ndarray  # [example, condition] object
    committed: np.ndarray  # [example] bool


def _stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """Return float32 ``values`` in the storage dtype (bf16 as its uint16 bits)."""
    if dtype == "bfloat16":
        return float32_to_bf16_bits(values)
    return values.astype(zarr_dtype(dtype))


def half_written_store(
    path: Path,
    *,
    n: int = 11,
    shard: int = 2,
    commit: tuple[int, ...] = (0, 1, 3),
    torn: int | None = 4,
    hidden_dtype: str = "float32",
    seed: int = 0,
) -> BuiltStore:
    """Return a store of ``n`` examples whose shards ``commit`` are committed.

    Shard ``torn`` gets its hidden states written but nothing else (no commit); every other
    shard stays at its fill values.
    """
    layout = ps.StoreLayout(
        n_examples=n,
        conditions=tuple(c["name"] for c in CONDITIONS),
        layers=(-1, 0, 1),
        reductions=("last", "image_mean", "text_mean"),
        d_model=6,
        candidates=("A", "B", "C"),
        hidden_dtype=hidden_dtype,
        shard_examples=shard,
    )
    rng = np.random.default_rng(seed)
    c = len(CONDITIONS)
    templates = ["color", "count", "prior"]
    table = {
        "id": [f"q{i}" for i in range(n)],
        "benchmark": ["synth"] * n,
        "category": [templates[i % 3] for i in range(n)],
        "gold": [f'["{"ABC"[i % 3]}"]' for i in range(n)],
        "metadata": [f'{{"template": "{templates[i % 3]}", "k": {i}}}' for i in range(n)],
        "source_row": list(range(n)),
    }
    attrs = {"conditions": CONDITIONS, "config": {"test": True}, "model": {"path": "none"}}
    unembed = rng.standard_normal((3, 6)).astype(np.float32)
    norm = {"kind": "rmsnorm", "eps": 1e-6, "weight": rng.random(6).astype(np.float32) + 0.5}
    ps.create_store(path, layout, attrs, table, unembed, norm)
    full = rng.standard_normal(layout.hidden_shape()).astype(np.float32)
    stored = _stored(full, hidden_dtype)
    hidden = decode(stored, hidden_dtype == "bfloat16")
    score = rng.integers(0, 2, (n, c)).astype(np.float32)
    answer = np.where(score > 0, "A", "B").astype(object)
    group = ps.open_for_capture(path)
    writer = ps.ShardWriter(group, layout, list(commit))
    for s in commit:
        start, stop = layout.shard_range(s)
        idx = np.arange(start, stop)
        writer.put(
            ps.BatchRows(
                indices=idx,
                raw=answer[idx],
                answer=answer[idx],
                extracted=np.ones((len(idx), c), bool),
                score=score[idx],
                cand_logprob=rng.standard_normal((len(idx), c, 3)).astype(np.float32),
                hidden=stored[idx],
            )
        )
    writer.close()
    if torn is not None:
        start, stop = layout.shard_range(torn)
        write_region(array(group, ps.schema.HIDDEN), start, stored[start:stop])
    committed = np.zeros(n, dtype=bool)
    for s in commit:
        committed[slice(*layout.shard_range(s))] = True
    return BuiltStore(path, layout, hidden, score, answer, committed)


def synth_answer_store(
    root: Path,
    examples: list[Any],
    *,
    ladder: tuple[float, ...],
    answer_of: Callable[[int, Any], list[str]],
    none: bool = False,
    attrs: dict[str, Any] | None = None,
    chunk_rows: int = 1024,
) -> Path:
    """Return an answers-only store of synthetic ``examples``, scored against the first gold.

    The examples are written to ``root/synth.tsv`` and recorded as the store's dataset, so
    export and the report's strips find them; ``answer_of(row, example)`` gives a row's answers
    in condition order (clean, the ladder, total, then none when asked).
    """
    from priorscope.engine.conditions import build_conditions
    from priorscope.engine.data import synth
    from priorscope.engine.store import write_answer_store

    tsv = synth.write_tsv(examples, root / "synth.tsv")
    answer = np.array([answer_of(i, e) for i, e in enumerate(examples)])
    first_gold = np.array([e.answers[0] for e in examples])
    dataset = {
        "files": [str(tsv)],
        "format": "vlmevalkit-tsv",
        "count": len(examples),
        "sha256": [hashlib.sha256(tsv.read_bytes()).hexdigest()],
    }
    return write_answer_store(
        root / "s.zarr",
        conditions=build_conditions(ladder, total=True, none=none),
        ids=[e.id for e in examples],
        gold=[list(e.answers) for e in examples],
        answer=answer,
        score=(answer == first_gold[:, None]).astype(np.float32),
        benchmark="synth",
        category=[e.category for e in examples],
        question=[e.question for e in examples],
        source_row=list(range(len(examples))),
        attrs={"dataset": dataset, **(attrs or {})},
        chunk_rows=chunk_rows,
    )


# Provenance of the invocation itself (time, --out, option spelling) may differ between runs.
INVOCATION_ATTRS = frozenset({"created", "capture_options"})


def store_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Return every array of the store at ``path`` by its path inside the store."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {
        name: np.asarray(arr[...])
        for name, arr in group.members(max_depth=None)
        if isinstance(arr, zarr.Array)
    }


def assert_stores_bitwise_equal(a: str | Path, b: str | Path) -> None:
    """Assert every array of two stores bitwise equal (floats compared as their bits, so NaN
    payloads and -0.0 count) and their attributes equal but for the invocation's own."""
    import json

    import zarr

    left, right = store_arrays(a), store_arrays(b)
    assert sorted(left) == sorted(right)
    for name, x in left.items():
        y = right[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.kind == "f":
            assert np.array_equal(x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}")), name
        else:
            assert np.array_equal(x, y), name
    attrs = [
        {
            k: v
            for k, v in zarr.open_group(str(p), mode="r").attrs.items()
            if k not in INVOCATION_ATTRS
        }
        for p in (a, b)
    ]
    assert json.dumps(attrs[0], sort_keys=True) == json.dumps(attrs[1], sort_keys=True)
