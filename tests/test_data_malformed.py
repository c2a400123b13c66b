"""Malformed benchmark files: each kind stops the load with its own specific message."""

from __future__ import annotations

import base64
import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from priorscope.engine.data import BadRowError, load
from priorscope.engine.data.images import encode_png
from priorscope.engine.errors import DataError, ImageError, UnknownNameError, UsageError

PNG = encode_png(Image.new("RGB", (16, 16), (10, 20, 30)))
NOISY = encode_png(Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48))
B64 = base64.b64encode(PNG).decode()
HEADER = ["index", "image", "question", "A", "B", "C", "answer"]


def _tsv(path: Path, rows: list[list[object]], header: list[str] = HEADER) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _row(**changes: object) -> list[object]:
    cells: dict[str, object] = {
        "index": 0,
        "image": B64,
        "question": "Which?",
        "A": "x",
        "B": "y",
        "C": "z",
        "answer": "A",
    }
    cells.update(changes)
    return [cells[h] for h in HEADER]


def _jsonl(tmp: Path, records: list[object], name: str = "q.jsonl") -> Path:
    (tmp / "img.png").write_bytes(PNG)
    path = tmp / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD_JSON = {"question_id": 1, "image": "img.png", "text": "What?"}

# Each case: (builds the file and returns load kwargs, error class, regex the message must match)
Case = tuple[Callable[[Path], dict], type[Exception], str]
CASES: dict[str, Case] = {
    "missing question column": (
        lambda t: {"path": _tsv(t / "d.tsv", [[0, B64, "A"]], ["index", "image", "answer"])},
        DataError,
        r"Column 'question' missing in d\.tsv \(header\).*--column question=NAME",
    ),
    "missing index column": (
        lambda t: {"path": _tsv(t / "d.tsv", [[B64, "q"]], ["image", "question"])},
        DataError,
        r"Column 'index' missing",
    ),
    "no image column at all": (
        lambda t: {"path": _tsv(t / "d.tsv", [[0, "q"]], ["index", "question"])},
        DataError,
        r"Expected one of: image, image_path",
    ),
    "bad base64": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row(image="%" * 80)])},
        BadRowError,
        r"d\.tsv, row 0 \(line 2\), column 'image': Expected base64 of an image file",
    ),
    "dangling image reference": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row(), _row(index=1, image="5")])},
        BadRowError,
        r"row 1 \(line 3\), column 'image'.*Got '5', which is no row's index",
    ),
    "wrong number of cells": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row(), [*_row(index=1), "extra"]])},
        BadRowError,
        r"row 1 \(line 3\): Expected 7 tab-separated cells, as in the header\. Got 8",
    ),
    "answer is not an option letter": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row(answer="E")])},
        BadRowError,
        r"column 'answer': Expected the answer to be one of the option letters A, B, C",
    ),
    "gap in options": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row(B="")])},
        BadRowError,
        r"column 'C': Expected options without gaps\. Got option C filled while option B is empty",
    ),
    "empty question": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row(question="  ")])},
        BadRowError,
        r"column 'question': Expected a question\. Got ''",
    ),
    "empty answer": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row(answer="")])},
        BadRowError,
        r"column 'answer': Expected a gold answer",
    ),
    "duplicate ids": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row(), _row(index=1), _row(index=0)])},
        DataError,
        r"d\.tsv, row 2: Expected unique ids\. Got id '0' again \(first seen in row 0\)",
    ),
    "not an image": (
        lambda t: {
            "path": _tsv(t / "d.tsv", [_row(image=base64.b64encode(b"plain text " * 20).decode())])
        },
        BadRowError,
        r"column 'image': Expected an encoded image \(PNG, JPEG, WebP, \.\.\.\)\. Got 220 bytes",
    ),
    "decompression bomb": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row()]), "max_pixels": 100},
        BadRowError,
        r"Expected an image of at most 100 pixels\. Got 16x16 = 256 pixels.*decompression bomb",
    ),
    "truncated image": (
        lambda t: {
            "path": _tsv(
                t / "d.tsv", [_row(image=base64.b64encode(NOISY[: len(NOISY) // 2]).decode())]
            ),
            "decode_images": True,
        },
        BadRowError,
        r"truncated or corrupt",
    ),
    "not UTF-8": (
        lambda t: (
            (t / "d.tsv").write_bytes(b"index\tquestion\n1\t\xff\xfe\n") and {"path": t / "d.tsv"}
        ),
        DataError,
        r"Expected UTF-8 text in d\.tsv\. Got bytes that are not UTF-8 at offset",
    ),
    "invalid JSON line": (
        lambda t: {"path": _jsonl(t, [GOOD_JSON, '{"question_id": 2,'])},
        BadRowError,
        r"q\.jsonl, row 1 \(line 2\): Expected one JSON object on the line\. Got invalid JSON",
    ),
    "JSON line not an object": (
        lambda t: {"path": _jsonl(t, [[1, 2]])},
        BadRowError,
        r"Got a JSON list instead",
    ),
    "JSON record without question": (
        lambda t: {"path": _jsonl(t, [{"question_id": 1, "image": "img.png"}])},
        BadRowError,
        r"column 'text': Expected a 'text' field\. Got an object with keys \['image', 'question_id'\]",
    ),
    "image path escapes the image folder": (
        lambda t: {"path": _jsonl(t, [{**GOOD_JSON, "image": "../../etc/passwd"}])},
        BadRowError,
        r"column 'image': Expected an image path inside the image folder .*outside it",
    ),
    "image file missing": (
        lambda t: {"path": _jsonl(t, [{**GOOD_JSON, "image": "nope.png"}])},
        BadRowError,
        r"column 'image': Expected an image file at .*nope\.png'\. Got no such file",
    ),
    "corrupt parquet": (
        lambda t: (
            (t / "d.parquet").write_bytes(b"PAR1 definitely not parquet")
            and {"path": t / "d.parquet"}
        ),
        DataError,
        r"Expected a parquet file at d\.parquet\. Got a file pyarrow cannot read",
    ),
    "parquet image of the wrong type": (
        lambda t: (
            pq.write_table(pa.table({"image": [5], "question": ["q"]}), t / "d.parquet")
            or {"path": t / "d.parquet"}
        ),
        BadRowError,
        r"column 'image': Expected an image as a \{bytes, path\} struct, bytes, a path or a list",
    ),
    "unknown format name": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row()]), "format": "tvs"},
        UnknownNameError,
        r"Unknown data format 'tvs'\. Did you mean 'tsv'",
    ),
    "unknown mapping field": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row()]), "columns": {"questoin": "q"}},
        UnknownNameError,
        r"Unknown column-mapping field 'questoin'\. Did you mean 'question'",
    ),
    "mapped column absent": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row()]), "columns": ["question=prompt"]},
        DataError,
        r"Column 'prompt' \(mapped to field 'question'\) missing in d\.tsv",
    ),
    "unrecognisable file": (
        lambda t: (t / "d.dat").write_text("just some words\n") and {"path": t / "d.dat"},
        DataError,
        r"whose extension and first line match none of them.*Pass --format",
    ),
    "missing file": (
        lambda t: {"path": t / "absent.tsv"},
        DataError,
        r"Expected a benchmark file at .*absent\.tsv'\. Got no such file",
    ),
    "bad on-bad policy": (
        lambda t: {"path": _tsv(t / "d.tsv", [_row()]), "on_bad": "ignore"},
        UsageError,
        r"Expected --on-bad to be one of: error, skip\. Got 'ignore'",
    ),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_malformed_input_names_the_problem(tmp_path, kind):
    build, error, pattern = CASES[kind]
    kwargs = build(tmp_path)
    with pytest.raises(error) as caught:
        load(**kwargs)
    assert re.search(pattern, str(caught.value)), str(caught.value)


def test_unparseable_answer_list_in_open_question(tmp_path):
    path = _tsv(
        tmp_path / "o.tsv", [[0, B64, "q", "[oops, 'x]"]], ["index", "image", "question", "answer"]
    )
    with pytest.raises(BadRowError, match=r"column 'answer'.*looks like a list but does not parse"):
        load(path)


def test_bad_row_errors_suggest_skipping_and_carry_the_problem(tmp_path):
    with pytest.raises(BadRowError) as caught:
        load(_tsv(tmp_path / "d.tsv", [_row(), _row(index=1, answer="Q")]))
    assert "--on-bad skip" in str(caught.value)
    assert (caught.value.problem.row, caught.value.problem.column) == (1, "answer")
    assert isinstance(caught.value, DataError) and not isinstance(caught.value, ImageError)


def test_duplicates_are_an_error_even_when_skipping(tmp_path):
    with pytest.raises(DataError, match="unique ids"):
        load(_tsv(tmp_path / "d.tsv", [_row(), _row()]), on_bad="skip")
