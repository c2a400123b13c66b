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

from priorscope.engine.analysis.export import GroundedConfig, export_grounded
from priorscope.engine.conditions import build_conditions
from priorscope.engine.data import load
from priorscope.engine.errors import StoreError, UsageError
from priorscope.engine.store import write_answer_store

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


def _write_tsv(path, terminator: str = "\n") -> list[bytes]:
    """Write the fixture TSV and return its records (header first), each as written."""
    rows = [["index", "image", "question", "A", "B", "answer", "category"]]
    for i in range(6):
        image = "101" if i == 3 else _png_b64(i)
        question = 'say "hi"\tthen\nleave?' if i == 5 else f"question {i}?"
        rows.append([str(100 + i), image, question, "yes", "no", "A", "c"])
    records = []
    for row in rows:
        buf = io.StringIO()
        csv.writer(buf, delimiter="\t", lineterminator=terminator).writerow(row)
        records.append(buf.getvalue().encode())
    path.write_bytes(b"".join(records))
    return records


def _store(tmp_path, dataset, fmt: str, n: int = 6, sha: str | None = None, rows=None):
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
        source_row=list(range(n)) if rows is None else rows,
        attrs={"dataset": {"files": [str(dataset)], "sha256": [digest], "count": n, "format": fmt}},
    )


@pytest.mark.parametrize("terminator", ["\n", "\r\n"])
def test_tsv_rows_are_byte_identical_and_references_inlined(tmp_path, terminator) -> None:
    records = _write_tsv(tmp_path / "bench.tsv", terminator)
    store = _store(tmp_path, tmp_path / "bench.tsv", "vlmevalkit")
    res = export_grounded(store, tmp_path / "out" / "grounded.tsv")
    assert res.selected_ids == ("100", "103", "105") and res.inlined_images == 1
    out = res.out.read_bytes()
    head = records[0] + records[1]  # header and row 0, byte for byte
    assert out.startswith(head) and out.endswith(records[6])  # quoted tab and newline kept
    middle = out[len(head) : len(out) - len(records[6])]
    assert middle.endswith(terminator.encode())
    inlined = next(csv.reader(io.StringIO(middle.decode(), newline=""), delimiter="\t"))
    assert inlined[1] == _png_b64(1) and inlined[0] == "103"


def test_thresholds_and_requirements_are_configurable(tmp_path) -> None:
    _write_tsv(tmp_path / "bench.tsv")
    store = _store(tmp_path, tmp_path / "bench.tsv", "tsv")
    only_total = GroundedConfig(require_severe=False)
    assert export_grounded(store, tmp_path / "a.tsv", only_total).selected_ids == (
        "100",
        "103",
        "105",
    )
    only_severe = GroundedConfig(require_total=False)
    assert export_grounded(store, tmp_path / "b.tsv", only_severe).selected_ids == (
        "100",
        "103",
        "104",
        "105",
    )
    mild = GroundedConfig(severe="blur@0.02")
    assert export_grounded(store, tmp_path / "c.tsv", mild).selected_ids == ("103",)
    with pytest.raises(UsageError, match="--wrong-below"):
        GroundedConfig(wrong_below=0)
    with pytest.raises(UsageError, match="at least one"):
        GroundedConfig(require_severe=False, require_total=False)


def test_changed_or_missing_dataset_is_refused(tmp_path) -> None:
    _write_tsv(tmp_path / "bench.tsv")
    store = _store(tmp_path, tmp_path / "bench.tsv", "tsv", sha="0" * 64)
    with pytest.raises(StoreError, match="the file changed"):
        export_grounded(store, tmp_path / "x.tsv")
    moved = _store(tmp_path, tmp_path / "bench.tsv", "tsv")
    (tmp_path / "bench.tsv").rename(tmp_path / "moved.tsv")
    with pytest.raises(StoreError, match="--dataset"):
        export_grounded(moved, tmp_path / "x.tsv")
    res = export_grounded(moved, tmp_path / "x.tsv", GroundedConfig(dataset=tmp_path / "moved.tsv"))
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

    lines = [
        json.dumps({"question_id": i, "image": "p.png", "text": f"q {i}?", "answer": "a"}) + "\n"
        for i in range(6)
    ]
    (tmp_path / "p.png").write_bytes(base64.b64decode(_png_b64(9)))
    (tmp_path / "b.jsonl").write_text(lines[0] + "\n" + "".join(lines[1:]))  # a blank line
    # Rows as the loader numbers them at capture (line numbers: the blank line counts).
    rows = [e.source.row for e in load(tmp_path / "b.jsonl").examples]
    assert rows == [0, 2, 3, 4, 5, 6]
    store = _store(tmp_path, tmp_path / "b.jsonl", "llava", rows=rows)
    res = export_grounded(store, tmp_path / "g.jsonl")
    assert res.out.read_text() == "".join(lines[i] for i in GROUNDED)
