"""File-level conventions of real benchmark files: one regression test per defect of issue 16.

Defects 1 (answer indices), 2 (repeated ids), 7 ("nan" cells), 8 (multi-image rows), 9
(HallusionBench 1/0, ScienceQA text-only rows, SEED choice_a..), the metric selection of 10 and
the command-line options that fix each convention.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from priorscope.cli.main import main
from priorscope.engine.data import BadRowError, Example, load
from priorscope.engine.data.conventions import metric_for, split_inline_options
from priorscope.engine.data.images import encode_png
from priorscope.engine.data.scoring import score
from priorscope.engine.errors import DataError, UsageError


def _png(i: int) -> bytes:
    return encode_png(Image.new("RGB", (6, 6), (i % 256, 3, 9)))


def _struct(i: int) -> dict[str, object]:
    return {"bytes": _png(i), "path": None}


def _parquet(path: Path, columns: dict[str, list[object]]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _tsv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _ai2d(path: Path, options: list[list[str]], answers: list[object]) -> Path:
    return _parquet(
        path,
        {
            "question": [f"q{i}" for i in range(len(options))],
            "options": options,
            "answer": answers,
            "image": [_struct(i) for i in range(len(options))],
        },
    )


# -- defect 1: integer answers that index the options -----------------------------------------
def test_index_answers_are_detected_per_file_not_per_row(tmp_path):
    # Row 1's options are numbers and its answer "1" is also an option text; the file's other
    # rows show the answers are indices, so row 1's gold is B, not A.
    path = _ai2d(tmp_path / "ai2d.parquet", [["cat", "dog", "cow"], ["1", "2", "3"]], ["0", "1"])
    result = load(path)
    assert [e.answers for e in result.examples] == [("A",), ("B",)]
    assert any("0-based option indices" in n for n in result.notes)
    ints = _ai2d(tmp_path / "ints.parquet", [["cat", "dog"], ["1", "2", "3"]], [1, 2])
    assert [e.answers for e in load(ints).examples] == [("B",), ("C",)]


def test_text_answers_that_are_numbers_stay_texts(tmp_path):
    path = _ai2d(tmp_path / "t.parquet", [["1", "2", "5"], ["2", "4", "8"]], ["5", "8"])
    assert [e.answers for e in load(path).examples] == [("C",), ("C",)]


def test_ambiguous_convention_is_refused_naming_column_and_options(tmp_path):
    path = _ai2d(tmp_path / "amb.parquet", [["1", "2", "3"], ["0", "1", "2"]], ["1", "2"])
    with pytest.raises(DataError) as caught:
        load(path)
    message = str(caught.value)
    assert "column 'answer'" in message and "--answer-is-index or --answer-is-text" in message
    assert "both fit every row" in message
    assert [e.answers for e in load(path, answer_is_index=True).examples] == [("B",), ("C",)]
    assert [e.answers for e in load(path, answer_is_index=False).examples] == [("A",), ("C",)]


def test_index_out_of_range_is_a_row_problem_once_the_convention_is_given(tmp_path):
    path = _ai2d(tmp_path / "oob.parquet", [["a", "b"], ["c", "d"]], ["1", "7"])
    with pytest.raises(DataError, match="neither fits every row"):
        load(path)
    result = load(path, answer_is_index=True, on_bad="skip")
    assert [e.answers for e in result.examples] == [("B",)]
    assert "0-based option index below 2" in result.skipped[0].reason


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(2, 5), st.data()),
        min_size=1,
        max_size=5,
    )
)
def test_index_gold_is_the_option_at_that_index(tmp_path, rows):
    options, answers = [], []
    for n, data in rows:
        # Word options: the text reading can never fit, so the file is read as indices.
        options.append([f"w{j}x" for j in range(n)])
        answers.append(str(data.draw(st.integers(0, n - 1))))
    examples = load(_ai2d(tmp_path / "p.parquet", options, answers)).examples
    assert [e.answers[0] for e in examples] == ["ABCDE"[int(a)] for a in answers]


# -- defect 2: repeated question_id in LLaVA files --------------------------------------------
def _mme_jsonl(tmp_path: Path) -> Path:
    (tmp_path / "a.png").write_bytes(_png(1))
    (tmp_path / "b.png").write_bytes(_png(2))
    records = [
        {"question_id": "a.png", "image": "a.png", "text": "Is there a cat?"},
        {"question_id": "a.png", "image": "a.png", "text": "Is there a dog?"},
        {"question_id": "b.png", "image": "b.png", "text": "Is it red?"},
        {"question_id": "a.png", "image": "a.png", "text": "Is it day?"},
    ]
    path = tmp_path / "llava_mme.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_repeated_question_ids_get_stable_derived_ids(tmp_path):
    path = _mme_jsonl(tmp_path)
    result = load(path, on_bad="skip")
    assert [e.id for e in result.examples] == ["a.png#0", "a.png#1", "b.png", "a.png#2"]
    assert [e.metadata.get("source_id") for e in result.examples] == [
        "a.png",
        "a.png",
        None,
        "a.png",
    ]
    assert result.n_derived_ids == 3 and not result.skipped
    assert any("3 rows share 1 ids" in n for n in result.notes)
    assert [e.id for e in load(path).examples] == [e.id for e in result.examples]  # stable
    with pytest.raises(DataError, match="--duplicate-ids derive"):
        load(path, duplicate_ids="error")


def test_tsv_duplicates_stay_an_error_unless_derived(tmp_path):
    b64 = base64.b64encode(_png(0)).decode()
    path = _tsv(tmp_path / "d.tsv", ["index", "image", "question"], [[1, b64, "q"], [1, b64, "r"]])
    with pytest.raises(DataError, match=r"unique ids.*--duplicate-ids derive"):
        load(path)
    assert [e.id for e in load(path, duplicate_ids="derive").examples] == ["1#0", "1#1"]


def test_derived_id_that_collides_is_refused(tmp_path):
    b64 = base64.b64encode(_png(0)).decode()
    rows = [[1, b64, "q"], [1, b64, "r"], ["1#0", b64, "s"]]
    path = _tsv(tmp_path / "c.tsv", ["index", "image", "question"], rows)
    with pytest.raises(DataError, match="derived id that another row already uses"):
        load(path, duplicate_ids="derive")


def test_cli_check_reports_derived_ids(tmp_path, capsys):
    assert main(["data", "check", str(_mme_jsonl(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "3 with a derived id" in out and "Note:" in out


# -- defect 7: "nan" strings in parquet -------------------------------------------------------
def test_nan_cells_are_no_options_and_no_hint(tmp_path):
    path = _parquet(
        tmp_path / "mmb.parquet",
        {
            "question": ["Is it?", "Which?"],
            "hint": ["nan", None],
            "A": ["yes", "x"],
            "B": ["no", "y"],
            "C": ["nan", "z"],
            "D": [None, "NaN"],
            "E": [float("nan"), float("nan")],  # a column pandas wrote as all-NaN doubles
            "answer": ["A", "C"],
            "image": [_struct(0), _struct(1)],
        },
    )
    first, second = load(path).examples
    assert first.options == ("yes", "no") and first.hint == ""
    assert second.options == ("x", "y", "z") and second.hint == ""


def test_nan_in_tsv_option_cells_too_but_other_texts_are_kept(tmp_path):
    b64 = base64.b64encode(_png(0)).decode()
    header = ["index", "image", "question", "hint", "A", "B", "C", "answer", "note"]
    path = _tsv(tmp_path / "n.tsv", header, [[0, b64, "q", "nan", "None", "b", "nan", "A", "nan"]])
    (example,) = load(path).examples
    assert example.options == ("None", "b") and example.hint == ""
    assert example.metadata == {"note": "nan"}


# -- defect 8: multi-image rows ---------------------------------------------------------------
def test_tsv_multi_image_rows_load_every_image(tmp_path):
    images = [base64.b64encode(_png(i)).decode() for i in range(3)]
    rows = [
        [0, json.dumps(images[:2]), "<image 1> <image 2> same?", "yes"],
        [1, repr(images), "three?", "no"],  # Python list literal, as pandas writes a list
        [2, "0", "reuses row 0's two images", "yes"],
    ]
    path = _tsv(tmp_path / "MMMU.tsv", ["index", "image", "question", "answer"], rows)
    result = load(path)
    first, second, third = result.examples
    assert first.images == (_png(0), _png(1)) and first.image_bytes == _png(0)
    assert second.images == tuple(_png(i) for i in range(3))
    assert third.images == first.images
    assert any("several images (up to 3)" in n for n in result.notes)


def test_unusable_image_in_a_list_is_named_not_called_bad_base64(tmp_path):
    good = base64.b64encode(_png(0)).decode()
    bad_b64 = json.dumps([good, "%%%" * 30])
    not_image = json.dumps([good, base64.b64encode(b"not an image at all" * 5).decode()])
    rows = [[0, bad_b64, "q", "yes"], [1, not_image, "q", "yes"], [2, "[" + "x" * 80, "q", "no"]]
    path = _tsv(tmp_path / "m.tsv", ["index", "image", "question", "answer"], rows)
    result = load(path, on_bad="skip")
    reasons = [p.reason for p in result.skipped]
    assert reasons[0].startswith("Image 2 of the row's 2 images: Expected base64")
    assert reasons[1].startswith("Image 2 of the row's 2 images: Expected an encoded image")
    assert "list literal of base64 strings for a multi-image row" in reasons[2]
    with pytest.raises(BadRowError, match=r"row 0 \(line 2\), column 'image': Image 2 of"):
        load(path)


def test_parquet_image_lists_and_numbered_image_columns(tmp_path):
    seed = _parquet(
        tmp_path / "seed.parquet",
        {
            "question": ["q0", "q1"],
            "choice_a": ["x", "u"],
            "choice_b": ["y", "nan"],
            "answer": ["B", "A"],
            "image": [[_struct(0), _struct(1)], [_struct(2)]],
        },
    )
    first, second = load(seed).examples
    assert first.images == (_png(0), _png(1)) and first.options == ("x", "y")
    assert second.images == (_png(2),) and second.options == ("u",)
    blink = _parquet(
        tmp_path / "blink.parquet",
        {
            "idx": ["v1"],
            "question": ["which?"],
            "image_1": [_struct(3)],
            "image_2": [_struct(4)],
            "image_3": [None],
            "choices": [["(A)", "(B)"]],
            "answer": ["(B)"],
        },
    )
    (example,) = load(blink).examples
    assert example.images == (_png(3), _png(4)) and example.answers == ("B",)


def test_jsonl_image_lists(tmp_path):
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": 1, "image": ["0.png", "1.png"], "text": "q"}) + "\n")
    assert load(path).examples[0].images == (_png(0), _png(1))
    path.write_text(json.dumps({"id": 1, "image": ["0.png", "9.png"], "text": "q"}) + "\n")
    with pytest.raises(BadRowError, match="Image 2 of the row's 2 images: Expected an image file"):
        load(path)


def test_example_images_keep_the_single_image_api():
    single = Example(id="s", question="q", answers=("a",), image_bytes=_png(0))
    assert single.images == (_png(0),) and single.has_image and single.extra_images == ()
    text_only = Example(id="t", question="q", answers=("a",))
    assert text_only.images == () and not text_only.has_image
    with pytest.raises(ValueError, match="image_bytes"):
        Example(id="x", question="q", answers=(), extra_images=(_png(1),))
    with pytest.raises(ValueError, match="metric"):
        Example(id="x", question="q", answers=(), metric="bleu")


# -- defect 9: HallusionBench 1/0, ScienceQA text-only, SEED choice_a.. --------------------------
def test_hallusionbench_gt_answer_1_0_is_yes_no(tmp_path):
    columns = {
        "question": ["Is it?", "Is it not?"],
        "gt_answer": ["1", "0"],
        "image": [_struct(0), _struct(1)],
    }
    path = _parquet(tmp_path / "hb.parquet", columns)
    result = load(path)
    assert [e.answers for e in result.examples] == [("yes",), ("no",)]
    assert score(result.examples[0], "Yes, it is.").score == 1.0
    assert score(result.examples[1], "No.").score == 1.0
    assert [e.answers for e in load(path, yes_no_01=False).examples] == [("1",), ("0",)]
    counts = _parquet(tmp_path / "c.parquet", {**columns, "answer": columns.pop("gt_answer")})
    assert [e.answers for e in load(counts).examples] == [("1",), ("0",)]  # a count stays one
    assert [e.answers for e in load(counts, yes_no_01=True).examples] == [("yes",), ("no",)]


def test_scienceqa_text_only_rows_are_marked(tmp_path):
    path = _parquet(
        tmp_path / "sqa.parquet",
        {
            "image": [_struct(0), None],
            "question": ["Which is a mammal?", "Which is a noun?"],
            "choices": [["frog", "whale"], ["run", "table"]],
            "answer": [1, 1],
        },
    )
    result = load(path)
    first, second = result.examples
    assert first.has_image and not second.has_image and second.images == ()
    assert second.answers == ("B",)
    assert any("text-only" in n and "'none'" in n for n in result.notes)
    with pytest.raises(BadRowError, match="--missing-image text-only"):
        load(path, missing_image="error")


def test_text_only_conventions_per_format(tmp_path):
    (tmp_path / "i.png").write_bytes(_png(0))
    jsonl = tmp_path / "sqa.jsonl"
    records = [{"id": 1, "image": "i.png", "text": "q"}, {"id": 2, "text": "text only"}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [e.has_image for e in load(jsonl).examples] == [True, False]
    b64 = base64.b64encode(_png(0)).decode()
    tsv = _tsv(tmp_path / "s.tsv", ["index", "image", "question"], [[0, b64, "q"], [1, "", "r"]])
    with pytest.raises(BadRowError, match="--missing-image text-only"):
        load(tsv)
    assert [e.has_image for e in load(tsv, missing_image="text-only").examples] == [True, False]


def test_a_file_with_no_image_at_all_is_refused_in_auto_mode(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": 1, "img": "x.png", "text": "q"}) + "\n")
    with pytest.raises(DataError, match=r"--column image=NAME.*--missing-image text-only"):
        load(path)
    assert not load(path, missing_image="text-only").examples[0].has_image


# -- defect 10: metric selection --------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("ChartQA_TEST", "relaxed"),
        ("chartqa", "relaxed"),
        ("PlotQA", "relaxed"),
        ("DocVQA_VAL", "anls"),
        ("InfoVQA_VAL", "anls"),
        ("TextVQA_VAL", "vqa"),
        ("synth", "vqa"),
    ],
)
def test_metric_follows_the_benchmark_name(name, metric):
    assert metric_for(name) == metric


def test_metric_is_set_per_file_and_overridable(tmp_path):
    b64 = base64.b64encode(_png(0)).decode()
    rows = [[0, b64, "value?", "45"], [1, b64, "name?", "Brazil"]]
    path = _tsv(tmp_path / "ChartQA_TEST.tsv", ["index", "image", "question", "answer"], rows)
    result = load(path)
    assert {e.metric for e in result.examples} == {"relaxed"}
    assert score(result.examples[0], "46").score == 1.0
    assert any("relaxed" in n for n in result.notes)
    plain = load(path, metric="vqa").examples
    assert score(plain[0], "46").score == 0.0
    docs = load(path, metric="anls").examples
    assert score(docs[1], "Brazl").score == pytest.approx(5 / 6, rel=1e-9)
    with pytest.raises(UsageError, match="--metric"):
        load(path, metric="bleu")


# -- the CLI options --------------------------------------------------------------------------
def test_cli_conventions_flags(tmp_path, capsys):
    path = _ai2d(tmp_path / "amb.parquet", [["1", "2", "3"], ["0", "1", "2"]], ["1", "2"])
    assert main(["data", "check", str(path)]) == 1
    assert "--answer-is-index or --answer-is-text" in capsys.readouterr().err
    assert main(["data", "check", str(path), "--answer-is-index"]) == 0
    assert main(["data", "show", str(path), "--answer-is-text", "--n", "1"]) == 0
    assert "answers │ A" in capsys.readouterr().out.replace("  ", " ")
    assert main(["data", "check", str(path), "--answer-is-index", "--metric", "blue"]) == 2


# -- options inside the question (MMStar) -----------------------------------------------------
@pytest.mark.parametrize(
    ("question", "stem", "options"),
    [
        ("What?\nOptions: A: cat, B: dog, C: a, b", "What?", ("cat", "dog", "a, b")),
        ("Pick one.\nA. red\nB. blue", "Pick one.", ("red", "blue")),
        ("Which (A) left (B) right", "Which", ("left", "right")),
        ("No options here: A: only one", None, None),
    ],
)
def test_split_inline_options(question, stem, options):
    parsed = split_inline_options(question)
    assert (parsed is None) if stem is None else parsed == (stem, options)


@given(
    st.lists(
        st.text(alphabet="abcdefgh xyz", min_size=1, max_size=8).map(str.strip).filter(bool),
        min_size=2,
        max_size=5,
    )
)
def test_split_inline_options_round_trip(texts):
    question = "Which?\nOptions: " + ", ".join(f"{'ABCDE'[i]}: {t}" for i, t in enumerate(texts))
    assert split_inline_options(question) == ("Which?", tuple(texts))


def test_judged_benchmarks_get_a_lower_bound_note(tmp_path):
    b64 = base64.b64encode(_png(0)).decode()
    rows = [[0, b64, "What is the total price?", "14"]]
    path = _tsv(tmp_path / "MMVet.tsv", ["index", "image", "question", "answer"], rows)
    notes = load(path).notes
    assert any("LLM judge" in n and "lower bound" in n for n in notes)
