"""Round trips through every loader with fixtures written here, plus skip reports and detection."""

from __future__ import annotations

import base64
import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from priorscope.engine.data import Example, SourceRef, load
from priorscope.engine.data.export import export_rows
from priorscope.engine.data.formats import detect_format, parse_format
from priorscope.engine.data.images import encode_png
from priorscope.engine.data.synth import SynthConfig, generate, write_tsv
from priorscope.engine.errors import UsageError


def _png(colour: tuple[int, int, int], size: int = 8) -> bytes:
    return encode_png(Image.new("RGB", (size, size), colour))


def _fields(example):
    return (
        example.id,
        example.question,
        example.answers,
        example.image_bytes,
        example.options,
        example.hint,
        example.category,
        example.benchmark,
        dict(example.metadata),
    )


def _write_tsv(path, header, rows):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def synth_rows():
    return generate(SynthConfig(n=20, seed=1, size=40)), generate(
        SynthConfig(n=20, seed=1, size=40, mc=True)
    )


@pytest.mark.parametrize("mc", [False, True])
def test_synth_tsv_round_trip(tmp_path, synth_rows, mc):
    examples = synth_rows[mc]
    result = load(write_tsv(examples, tmp_path / "synth.tsv"))
    assert result.format == "vlmevalkit-tsv" and not result.skipped and result.report_path is None
    assert [_fields(e) for e in result.examples] == [_fields(e) for e in examples]
    assert [e.source for e in result.examples] == [
        SourceRef(str(tmp_path / "synth.tsv"), "vlmevalkit-tsv", i) for i in range(20)
    ]


def test_tsv_image_reuse_paths_answer_lists_and_extra_columns(tmp_path):
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "b.png").write_bytes(blue)
    header = [
        "index",
        "image",
        "image_path",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "answer",
        "category",
        "l2-category",
        "split",
    ]
    rows = [
        [
            10,
            base64.b64encode(red).decode(),
            "",
            "Colour?",
            "a hint",
            "red",
            "blue",
            "",
            "A",
            "color",
            "perception",
            "dev",
        ],
        [11, "10", "", "Same image?", "", "", "", "", '["yes", "yeah"]', "reuse", "", "dev"],
        [
            12,
            "",
            "imgs/b.png",
            "Colour here?",
            "",
            "red",
            "blue",
            "green",
            "blue",
            "color",
            "",
            "test",
        ],
    ]
    result = load(_write_tsv(tmp_path / "MMB_DEV.tsv", header, rows))
    first, second, third = result.examples
    assert first.image_bytes == red and second.image_bytes == red and third.image_bytes == blue
    assert first.options == ("red", "blue") and first.answers == ("A",) and first.hint == "a hint"
    assert second.options == () and second.answers == ("yes", "yeah")
    assert third.answers == ("B",)  # an option's text becomes its letter
    assert first.metadata == {"l2-category": "perception", "split": "dev"}
    assert {e.benchmark for e in result.examples} == {"MMB_DEV"}
    assert load(tmp_path / "MMB_DEV.tsv", benchmark="mmb").examples[0].benchmark == "mmb"
    assert [e.id for e in load(tmp_path / "MMB_DEV.tsv", limit=2).examples] == ["10", "11"]


def test_column_mapping_overrides(tmp_path):
    header = ["index", "image", "prompt", "label"]
    rows = [[1, base64.b64encode(_png((1, 2, 3))).decode(), "What?", "thing"]]
    path = _write_tsv(tmp_path / "mapped.tsv", header, rows)
    for columns in ({"question": "prompt", "answer": "label"}, ["question=prompt", "answer=label"]):
        (example,) = load(path, columns=columns).examples
        assert example.question == "What?" and example.answers == ("thing",)


def test_parquet_round_trip_struct_bytes_and_vqa_answers(tmp_path):
    images = [_png((i * 40, 0, 0)) for i in range(4)]
    (tmp_path / "p.png").write_bytes(images[3])
    table = pa.table(
        {
            "question_id": [100, 101, 102, 103],
            "image": [
                {"bytes": images[0], "path": "a.png"},
                {"bytes": images[1], "path": None},
                {"bytes": images[2], "path": "c.png"},
                {"bytes": None, "path": "p.png"},
            ],
            "question": ["q0", "q1", "q2", "q3"],
            "answers": [
                [{"answer": "2", "answer_id": 1}, {"answer": "two", "answer_id": 2}],
                [{"answer": "red", "answer_id": 1}],
                [{"answer": "yes", "answer_id": 1}],
                [{"answer": "no", "answer_id": 1}],
            ],
            "question_type": ["count", "color", "yn", "yn"],
            "difficulty": [1, 2, 3, 4],
        }
    )
    path = tmp_path / "vqa.parquet"
    pq.write_table(table, path, row_group_size=3)
    result = load(path)
    assert result.format == "hf-parquet"
    assert [e.image_bytes for e in result.examples] == images
    assert [e.id for e in result.examples] == ["100", "101", "102", "103"]
    assert result.examples[0].answers == ("2", "two")
    assert result.examples[1].category == "color"
    assert result.examples[2].metadata == {"difficulty": "3"}
    assert result.examples[3].source == SourceRef(str(path), "hf-parquet", 3)


def test_parquet_raw_bytes_option_lists_and_row_ids(tmp_path):
    images = [_png((0, 9 * i, 0)) for i in range(3)]
    table = pa.table(
        {
            "img": images,
            "text": ["a?", "b?", "c?"],
            "choices": [["x", "y"], ["x", "y", "z"], ["u", "v"]],
            "answer": ["B", "z", "A"],
        }
    )
    pq.write_table(table, tmp_path / "mc.parquet")
    examples = load(tmp_path / "mc.parquet").examples
    assert [e.id for e in examples] == ["0", "1", "2"]  # no id column: the row number
    assert [e.answers for e in examples] == [("B",), ("C",), ("A",)]
    assert examples[1].options == ("x", "y", "z") and examples[2].image_bytes == images[2]


def test_jsonl_round_trip_with_separate_image_root(tmp_path):
    root = tmp_path / "images"
    (root / "val").mkdir(parents=True)
    images = {f"val/{i}.png": _png((0, 0, 50 * i)) for i in range(3)}
    for name, data in images.items():
        (root / name).write_bytes(data)
    lines = [
        {"question_id": 0, "image": "val/0.png", "text": "Describe.", "category": "conv"},
        {"question_id": 1, "image": "val/1.png", "text": "Count?", "answer": "3", "source": "coco"},
        {
            "question_id": "q2",
            "image": "val/2.png",
            "question": "Pick",
            "options": ["a", "b"],
            "answer": "b",
        },
    ]
    path = tmp_path / "questions.jsonl"
    path.write_text(
        "\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n"
    )
    result = load(path, image_root=root)
    assert result.format == "llava-jsonl"
    assert [e.image_bytes for e in result.examples] == list(images.values())
    assert result.examples[0].answers == () and result.examples[0].category == "conv"
    assert result.examples[1].answers == ("3",) and result.examples[1].metadata == {
        "source": "coco"
    }
    assert result.examples[2].answers == ("B",) and result.examples[2].id == "q2"
    assert [e.source.row for e in result.examples] == [0, 1, 3]  # 0-based line numbers


def test_skip_mode_counts_names_and_reports_every_bad_row(tmp_path):
    good = base64.b64encode(_png((5, 5, 5))).decode()
    rows = [
        [0, good, "ok?", "yes"],
        [1, "!!not base64 at all, and long enough to not be a reference to a row!!", "bad?", "no"],
        [2, good, "", "no"],
        [3, good, "ok too?", "no"],
        [4, "77", "missing ref?", "yes"],
    ]
    path = _write_tsv(tmp_path / "dirty.tsv", ["index", "image", "question", "answer"], rows)
    result = load(path, on_bad="skip")
    assert [e.id for e in result.examples] == ["0", "3"]
    assert [(p.row, p.column, p.line) for p in result.skipped] == [
        (1, "image", 3),
        (2, "question", 4),
        (4, "image", 6),
    ]
    assert result.n_rows == 5
    assert result.report_path == tmp_path / "dirty.tsv.skipped.tsv"
    with result.report_path.open(newline="") as handle:
        report = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["row"] for r in report] == ["1", "2", "4"]
    assert "not valid base64" in report[0]["reason"] and "77" in report[2]["reason"]
    custom = load(path, on_bad="skip", report_path=tmp_path / "r.tsv")
    assert custom.report_path == tmp_path / "r.tsv" and custom.report_path.exists()


def test_format_detection_by_content_and_aliases(tmp_path, synth_rows):
    tsv = write_tsv(synth_rows[0][:2], tmp_path / "a.tsv")
    renamed = tmp_path / "a.data"
    renamed.write_bytes(tsv.read_bytes())
    assert detect_format(renamed) == "vlmevalkit-tsv"
    assert len(load(renamed).examples) == 2
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "b.bin")
    assert detect_format(tmp_path / "b.bin") == "hf-parquet"
    (tmp_path / "c.txt").write_text('{"question_id": 1}\n')
    assert detect_format(tmp_path / "c.txt") == "llava-jsonl"
    assert parse_format("TSV") == "vlmevalkit-tsv" and parse_format("jsonl") == "llava-jsonl"
    assert len(load(renamed, format="tsv").examples) == 2


texts = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
        min_size=1,
        max_size=12,
    )
    .map(str.strip)
    .filter(bool)
)
# An option or hint cell reading "nan" (any case) is an empty cell by the loader's convention
# (pandas' NaN written as text; engine/data/COMPATIBILITY.md), so it cannot round-trip as text.
cell_texts = texts.filter(lambda t: t.lower() != "nan")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            texts,
            st.lists(cell_texts, max_size=4, unique=True),
            st.lists(texts, min_size=1, max_size=3),
            cell_texts,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_text_survives_the_tsv_round_trip(tmp_path, rows):
    image = _png((3, 4, 5))
    examples = []
    for i, (question, options, golds, hint) in enumerate(rows):
        answers = ("ABCD"[len(golds) % len(options)],) if options else tuple(golds)
        examples.append(
            Example(
                id=str(i),
                question=question,
                answers=answers,
                image_bytes=image,
                options=tuple(options),
                hint=hint,
                benchmark="b",
                metadata={"note": hint},
            )
        )
    loaded = load(write_tsv(examples, tmp_path / "prop.tsv")).examples
    assert [_fields(e) for e in loaded] == [_fields(e) for e in examples]


def test_answers_that_look_like_lists_round_trip(tmp_path):
    image = _png((9, 9, 9))
    examples = [
        Example(id="0", question="q", answers=("[1, 2]",), image_bytes=image),
        Example(id="1", question="q", answers=("a", "b"), image_bytes=image),
    ]
    loaded = load(write_tsv(examples, tmp_path / "lists.tsv")).examples
    assert [e.answers for e in loaded] == [("[1, 2]",), ("a", "b")]


def test_export_tsv_subset_copies_rows_and_inlines_dangling_references(tmp_path):
    red, blue = _png((200, 0, 0)), _png((0, 0, 200))
    header = ["index", "image", "question", "answer", "split"]
    rows = [
        [1, base64.b64encode(red).decode(), "first, with\ttab", "a", "x"],
        [2, base64.b64encode(blue).decode(), "second", "b", ""],
        [3, "1", "third reuses first", "c", "y"],
        [4, "2", "fourth reuses second", "d", "z"],
    ]
    source = _write_tsv(tmp_path / "src.tsv", header, rows)
    examples = load(source).examples
    subset = [examples[1], examples[2], examples[3]]  # row 2 refers to the unexported row 0
    out = export_rows(subset, tmp_path / "subset.tsv")
    lines = source.read_text().split("\n")
    exported = out.read_text().split("\n")
    assert exported[0] == lines[0] and exported[1] == lines[2] and exported[3] == lines[4]
    assert exported[2] != lines[3]  # rewritten with the image inline
    reloaded = load(out, benchmark="src").examples
    assert [_fields(e) for e in reloaded] == [_fields(e) for e in subset]


def test_export_jsonl_and_parquet_subsets(tmp_path):
    (tmp_path / "i.png").write_bytes(_png((1, 1, 1)))
    records = [
        {"question_id": i, "image": "i.png", "text": f"q{i} \u2028 sep", "answer": str(i)}
        for i in range(4)
    ]
    source = tmp_path / "q.jsonl"
    source.write_bytes(
        b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\r\n" for r in records)
    )
    examples = load(source).examples
    out = export_rows([examples[3], examples[1]], tmp_path / "sub.jsonl")
    raw = source.read_bytes().split(b"\n")
    assert out.read_bytes() == raw[1] + b"\n" + raw[3] + b"\n"
    assert [e.id for e in load(out, image_root=tmp_path).examples] == ["1", "3"]

    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "image": [_png((i, 0, 0)) for i in range(3)],
            "question": ["x", "y", "z"],
            "answer": ["1", "2", "3"],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    loaded = load(tmp_path / "t.parquet").examples
    sub = load(export_rows([loaded[2], loaded[0]], tmp_path / "sub.parquet")).examples
    assert [_fields(e)[:4] for e in sub] == [_fields(e)[:4] for e in (loaded[0], loaded[2])]
    with pytest.raises(UsageError, match="one benchmark file"):
        export_rows([loaded[0], examples[0]], tmp_path / "mixed.tsv")
