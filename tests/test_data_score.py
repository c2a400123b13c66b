"""``priorscope data score``: a model's answer file from another harness, scored against a
benchmark file (issue 16: real model outputs, scored like the reference harnesses).

The benchmark files are the compatibility fixtures (tests/compat_layouts.py); the answer files
are written here in LLaVA's answer JSONL and VLMEvalKit's prediction-TSV layouts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from compat_layouts import LAYOUTS

from priorscope.engine.data import load
from priorscope.engine.data.replies import compare_scorers, load_replies, score_replies
from priorscope.engine.errors import DataError


def _layout(benchmark: str, fmt: str, folder: Path) -> Path:
    layout = next(la for la in LAYOUTS if la.benchmark == benchmark and la.format == fmt)
    return layout.build(folder)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_llava_answers_with_repeated_question_ids_match_in_file_order(tmp_path) -> None:
    # MME on the Hub repeats question_id once per question about an image; LLaVA's answer file
    # repeats it the same way, in the same order.
    bench = _layout("MME", "hf-parquet", tmp_path)
    answers = _jsonl(
        tmp_path / "answers.jsonl",
        [
            {"question_id": "existence/1.png", "prompt": "q", "text": "Yes", "model_id": "m"},
            {"question_id": "existence/1.png", "prompt": "q", "text": "Yes.", "model_id": "m"},
            {
                "question_id": "color/2.png",
                "prompt": "q",
                "text": "No, it is not.",
                "model_id": "m",
            },
        ],
    )
    replies = load_replies(answers)
    assert (replies.id_column, replies.reply_column, replies.n_derived) == (
        "question_id",
        "text",
        2,
    )
    scored = score_replies(load(bench).examples, replies)
    assert [(ex.id, s.answer, s.score) for ex, _, s in scored.rows] == [
        ("existence/1.png#0", "yes", 1.0),
        ("existence/1.png#1", "yes", 0.0),
        ("color/2.png", "no", 0.0),
    ]
    assert scored.accuracy == pytest.approx(1 / 3)
    assert scored.by_category() == {"color": (1, 0.0), "existence": (2, 0.5)}


def test_vlmevalkit_predictions_never_take_the_gold_column_as_the_reply(tmp_path) -> None:
    bench = _layout("MMBench", "vlmevalkit-tsv", tmp_path)
    pred = tmp_path / "model_MMBench.tsv"
    with open(pred, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["index", "question", "answer", "prediction"])
        writer.writerow(["0", "q", "B", "b"])  # lower case: priorscope B, VLMEvalKit nothing
        writer.writerow(["1", "q", "A", "A. spring"])
        writer.writerow(["7", "q", "B", "B"])  # no such example
    replies = load_replies(pred)
    assert replies.reply_column == "prediction"
    examples = load(bench).examples
    ours, theirs = (score_replies(examples, replies, s) for s in ("priorscope", "vlmevalkit"))
    assert [s.answer for _, _, s in ours.rows] == ["B", "A"]
    assert [s.answer for _, _, s in theirs.rows] == [None, "A"]
    assert ours.unanswered == ["2"] and ours.unknown == ["7"]
    cmp = compare_scorers(ours, theirs)
    assert (cmp.n, cmp.same_reading, cmp.same_verdict) == (2, 1, 1)
    assert cmp.by_rule == {"choice": [2, 1]}
    assert [d.example_id for d in cmp.disagreements] == ["0"]


def test_answer_file_errors_name_the_file_and_the_option(tmp_path) -> None:
    bad = _jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "answer": "B"}])
    with pytest.raises(DataError, match=r"reply column .*Got columns \['question_id', 'answer'\]"):
        load_replies(bad)
    with pytest.raises(DataError, match="--reply-column"):
        load_replies(bad, reply_column="pred")
    assert load_replies(bad, reply_column="answer").by_id == {"1": "B"}
    odd = tmp_path / "a.xls"
    odd.write_bytes(b"x")
    with pytest.raises(DataError, match=r"a\.xls: Expected an answer file ending in"):
        load_replies(odd)
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"question_id": 1, "text": "A"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.jsonl: line 2: Expected one JSON object"):
        load_replies(broken)


def test_cli_scores_compares_and_writes_rows(tmp_path, capsys) -> None:
    from priorscope.cli.main import main

    bench = _layout("MMBench", "vlmevalkit-tsv", tmp_path)
    answers = _jsonl(
        tmp_path / "answers.jsonl",
        [
            {"question_id": 0, "text": "The answer is b"},
            {"question_id": 1, "text": "A"},
            {"question_id": 2, "text": "B"},
        ],
    )
    out = tmp_path / "scored.tsv"
    args = ["data", "score", str(bench), "--answers", str(answers), "--compare"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 scored" in text and "100.00%" in text
    assert "same reading 66.67%" in text and "VLMEvalKit None (0)" in text
    rows = list(csv.reader(out.open(encoding="utf-8"), delimiter="\t"))
    assert rows[0][:3] == ["id", "category", "rule"] and [r[4] for r in rows[1:]] == ["B", "A", "B"]
    assert main([*args[:5], "--scorer", "vlmevalkit"]) == 0
    assert "66.67%" in capsys.readouterr().out  # b is no letter to VLMEvalKit: 2 of 3 right
    assert main([*args[:5], "--scorer", "VLMEvalKit"]) == 2


def test_ids_and_replies_are_cleaned_and_mismatches_refused(tmp_path) -> None:
    # Parquet and pandas write integer ids as floats, missing replies as null or NaN.
    import pyarrow as pa
    import pyarrow.parquet as pq

    pred = tmp_path / "pred.parquet"
    pq.write_table(pa.table({"index": [0.0, 1.0, 2.0], "prediction": ["B", None, None]}), pred)
    assert load_replies(pred).by_id == {"0": "B", "1": "", "2": ""}
    nan = tmp_path / "nan.json"
    nan.write_text('[{"index": 1.0, "prediction": NaN}]', encoding="utf-8")
    assert load_replies(nan).by_id == {"1": ""}
    bench = _layout("MMBench", "vlmevalkit-tsv", tmp_path)
    scored = score_replies(load(bench).examples, load_replies(pred))
    assert [(s.answer, s.extracted) for _, _, s in scored.rows] == [
        ("B", True),
        (None, False),
        (None, False),
    ]
    nulls = _jsonl(tmp_path / "n.jsonl", [{"question_id": None, "text": "A"}])
    with pytest.raises(DataError, match=r"row 1: Expected an id in column 'question_id'"):
        load_replies(nulls)
    other = _jsonl(tmp_path / "o.jsonl", [{"question_id": "x/1.png", "text": "A"}])
    with pytest.raises(DataError, match=r"Got none that does \(replies like 'x/1.png', examples"):
        score_replies(load(bench).examples, load_replies(other))
    unscored = _layout("MME", "llava-jsonl", tmp_path)
    with pytest.raises(DataError, match="Expected gold answers in the benchmark file"):
        score_replies(load(unscored).examples, load_replies(other))


def test_accuracy_with_and_without_the_unanswered(tmp_path) -> None:
    bench = _layout("MMBench", "vlmevalkit-tsv", tmp_path)
    answers = _jsonl(tmp_path / "a.jsonl", [{"question_id": 0, "text": "B"}])
    scored = score_replies(load(bench).examples, load_replies(answers))
    assert (scored.accuracy, scored.accuracy_all, scored.unanswered_gold) == (1.0, 1 / 3, 2)


def test_vlmevalkit_xlsx_predictions(tmp_path) -> None:
    # VLMEvalKit writes {model}_{dataset}.xlsx: the benchmark's columns plus 'prediction'.
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["index", "question", "A", "B", "answer", "prediction"])
    sheet.append([0, "q", "cat", "dog", "B", "B"])
    sheet.append([1, "q", "spring", "winter", "A", "The answer is B."])
    sheet.append([None, None, None, None, None, None])  # trailing empty rows are dropped
    book.save(tmp_path / "llava_MMBench.xlsx")
    replies = load_replies(tmp_path / "llava_MMBench.xlsx")
    assert (replies.id_column, replies.reply_column) == ("index", "prediction")
    assert replies.by_id == {"0": "B", "1": "The answer is B."}
    bench = _layout("MMBench", "vlmevalkit-tsv", tmp_path)
    scored = score_replies(load(bench).examples, replies)
    assert [s.score for _, _, s in scored.rows] == [1.0, 0.0]
