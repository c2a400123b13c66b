"""export-grounded writes the items that need the image in the benchmark's own format."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from priorscope.engine.analysis.answer_store import write_answer_store
from priorscope.engine.analysis.export import (
    export_grounded,
    parse_grounded_config,
    split_records,
)
from priorscope.engine.conditions import build_conditions
from priorscope.engine.errors import StoreError, UsageError

CONDS = build_conditions((0.02, 0.08), total=True)  # clean, blur@0.02, blur@0.08, total
# Scores per data row: clean, blur@0.02, blur@0.08 (severe), total.
SCORES = np.array(
    [
        [1, 1, 0, 0],  # row 0: grounded
        [1, 1, 1, 1],  # row 1: blind-answerable
        [0, 0, 0, 0],  # row 2: wrong on clean
        [1, 0, 0, 0],  # row 3: grounded; its image refers to row 1's
        [1, 0, 0, 1],  # row 4: right under total: not grounded
        [1, 1, 0, 0],  # row 5: grounded; question holds a quoted tab and newline
    ],
    dtype=np.float32,
)
GROUNDED = [0, 3, 5]


def _png_b64(seed: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _write_tsv(path, terminator: str = "\n") -> bytes:
    rows = [["index", "image", "question", "A", "B", "answer", "category"]]
    for i in range(6):
        image = "101" if i == 3 else _png_b64(i)
        question = 'say "hi"\tthen\nleave?' if i == 5 else f"question {i}?"
        rows.append([str(100 + i), image, question, "yes", "no", "A", "c"])
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator=terminator).writerows(rows)
    data = buf.getvalue().encode()
    path.write_bytes(data)
    return data


def _store(tmp_path, dataset, fmt: str, n: int = 6, sha: str | None = None):
    digest = sha or hashlib.sha256(dataset.read_bytes()).hexdigest()
    answer = np.where(SCORES[:n] > 0, "A", "B")
    return write_answer_store(
        tmp_path / f"{fmt}.zarr",
        conditions=CONDS,
        ids=[str(100 + i) for i in range(n)],
        gold=[["A"]] * n,
        options=[("yes", "no")] * n,
        answer=answer,
        score=SCORES[:n],
        source_row=list(range(n)),
        attrs={"dataset": {"files": [str(dataset)], "sha256": [digest], "count": n, "format": fmt}},
    )


@pytest.mark.parametrize("terminator", ["\n", "\r\n"])
def test_tsv_rows_are_byte_identical_and_references_inlined(tmp_path, terminator) -> None:
    data = _write_tsv(tmp_path / "bench.tsv", terminator)
    store = _store(tmp_path, tmp_path / "bench.tsv", "vlmevalkit")
    res = export_grounded(store, tmp_path / "out" / "grounded.tsv")
    assert res.selected_ids == ("100", "103", "105") and res.inlined_images == 1
    records = split_records(data)
    out = split_records(res.out.read_bytes())
    assert len(out) == 4 and out[0] == records[0]
    assert out[1] == records[1] and out[3] == records[6]  # byte for byte, quoted newline kept
    inlined = next(csv.reader(io.StringIO(out[2].decode()), delimiter="\t"))
    assert inlined[1] == _png_b64(1) and inlined[0] == "103"
    assert out[2].endswith(terminator.encode())


def test_thresholds_and_requirements_are_configurable(tmp_path) -> None:
    _write_tsv(tmp_path / "bench.tsv")
    store = _store(tmp_path, tmp_path / "bench.tsv", "tsv")
    only_total = parse_grounded_config(require_severe=False)
    assert export_grounded(store, tmp_path / "a.tsv", only_total).selected_ids == (
        "100",
        "103",
        "105",
    )
    only_severe = parse_grounded_config(require_total=False)
    assert export_grounded(store, tmp_path / "b.tsv", only_severe).selected_ids == (
        "100",
        "103",
        "104",
        "105",
    )
    mild = parse_grounded_config(severe="blur@0.02")
    assert export_grounded(store, tmp_path / "c.tsv", mild).selected_ids == ("103",)
    with pytest.raises(UsageError, match="--wrong-below"):
        parse_grounded_config(wrong_below=0)
    with pytest.raises(UsageError, match="at least one"):
        parse_grounded_config(require_severe=False, require_total=False)


def test_changed_or_missing_dataset_is_refused(tmp_path) -> None:
    _write_tsv(tmp_path / "bench.tsv")
    store = _store(tmp_path, tmp_path / "bench.tsv", "tsv", sha="0" * 64)
    with pytest.raises(StoreError, match="the file changed"):
        export_grounded(store, tmp_path / "x.tsv")
    moved = _store(tmp_path, tmp_path / "bench.tsv", "tsv")
    (tmp_path / "bench.tsv").rename(tmp_path / "moved.tsv")
    with pytest.raises(StoreError, match="--dataset"):
        export_grounded(moved, tmp_path / "x.tsv")
    res = export_grounded(
        moved, tmp_path / "x.tsv", parse_grounded_config(dataset=tmp_path / "moved.tsv")
    )
    assert len(res.selected_ids) == 3


def test_parquet_and_jsonl_keep_the_selected_rows(tmp_path) -> None:
    table = pa.table(
        {"id": [f"r{i}" for i in range(6)], "image": [b"\x89PNG"] * 6, "answers": [["a", "b"]] * 6}
    )
    pq.write_table(table, tmp_path / "b.parquet")
    res = export_grounded(
        _store(tmp_path, tmp_path / "b.parquet", "parquet"), tmp_path / "g.parquet"
    )
    got = pq.read_table(res.out)
    assert got.column("id").to_pylist() == [f"r{i}" for i in GROUNDED]
    assert got.schema.equals(table.schema)

    lines = [json.dumps({"id": i, "q": f"q {i}"}) + "\n" for i in range(6)]
    (tmp_path / "b.jsonl").write_text(lines[0] + "\n" + "".join(lines[1:]))  # a blank line
    res = export_grounded(_store(tmp_path, tmp_path / "b.jsonl", "llava"), tmp_path / "g.jsonl")
    assert res.out.read_text() == "".join(lines[i] for i in GROUNDED)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.text(alphabet='ab"\t\n ', max_size=6), min_size=3, max_size=3),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["\n", "\r\n"]),
)
def test_split_records_agrees_with_the_csv_module(rows, terminator) -> None:
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator=terminator).writerows(rows)
    records = split_records(buf.getvalue().encode())
    parsed = [
        next(csv.reader(io.StringIO(r.decode(), newline=""), delimiter="\t")) for r in records
    ]
    assert parsed == rows
