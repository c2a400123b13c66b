"""The synth and data commands: exit codes 0/1/2, what they print, what they write."""

from __future__ import annotations

import base64
import csv
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from priorscope.cli.main import main
from priorscope.engine.data import load
from priorscope.engine.data.images import encode_png


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "synth.tsv"
    assert main(["synth", "--out", str(path), "--n", "30", "--size", "48", "--seed", "4"]) == 0
    return path


def _dirty(tmp_path):
    image = base64.b64encode(encode_png(Image.new("RGB", (8, 8)))).decode()
    path = tmp_path / "dirty.tsv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "image", "question", "answer"])
        writer.writerows([[0, image, "q?", "yes"], [1, image, "", "no"], [2, image, "q2?", "no"]])
    return path


def test_synth_writes_the_requested_rows_deterministically(tmp_path, synth_file, capsys):
    again = tmp_path / "again.tsv"
    assert main(["synth", "--out", str(again), "--n", "30", "--size", "48", "--seed", "4"]) == 0
    assert again.read_bytes() == synth_file.read_bytes()
    assert "Wrote 30 rows" in capsys.readouterr().out
    mc = tmp_path / "mc.tsv"
    assert main(["synth", "--out", str(mc), "--n", "10", "--mc", "--templates", "prior"]) == 0
    examples = load(mc).examples
    assert {e.metadata["template"] for e in examples} == {"prior"}
    assert all(e.answers[0] in "ABCD" and len(e.options) == 4 for e in examples)


def test_check_good_file_exits_0_and_counts(synth_file, capsys):
    assert main(["data", "check", str(synth_file)]) == 0
    out = capsys.readouterr().out
    assert "30 of 30 rows loaded" in out and "0 multiple choice, 30 open-ended" in out
    for template in ("color", "count", "presence", "prior", "control"):
        assert re.search(rf"{template}\s*│\s*6 │", out)


def test_check_bad_file_exits_1_with_the_row_named(tmp_path, capsys):
    path = _dirty(tmp_path)
    assert main(["data", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "dirty.tsv, row 1 (line 3), column 'question'" in err and "Traceback" not in err
    assert main(["data", "check", str(path), "--on-bad", "skip"]) == 1
    out = capsys.readouterr().out
    assert "2 of 3 rows loaded" in out and "1 rows skipped" in out
    assert (tmp_path / "dirty.tsv.skipped.tsv").exists()


def test_show_prints_examples(synth_file, capsys):
    assert main(["data", "show", str(synth_file), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "what color is the" in out and "48x48" in out
    assert "synth / 1" in out and "synth / 2" not in out


@pytest.mark.parametrize(
    "args",
    [
        ["synth", "--n", "5"],  # --out missing
        ["synth", "--out", "x.tsv", "--prior-rate", "3"],
        ["synth", "--out", "x.tsv", "--templates", "colr"],
        ["synth", "--out", "x.tsv", "--n", "many"],
        ["data", "check", "FILE", "--on-bad", "ignore"],
        ["data", "check", "FILE", "--format", "csv"],
        ["data", "check", "FILE", "--column", "qestion=prompt"],
        ["data", "show", "FILE", "--n", "0"],
    ],
)
def test_usage_errors_exit_2(synth_file, tmp_path, monkeypatch, args, capsys):
    monkeypatch.chdir(tmp_path)
    args = [str(synth_file) if a == "FILE" else a for a in args]
    assert main(args) == 2
    assert not (tmp_path / "x.tsv").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_missing_file_exits_1(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope.tsv")]) == 1
    assert "Got no such file" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["synth"], ["data", "check"], ["data", "show"], ["data"]])
def test_every_help_has_an_example(command, capsys):
    assert main([*command, "--help"]) == 0
    assert "Example: priorscope" in capsys.readouterr().out


def test_show_lists_every_image_and_marks_text_only_rows(tmp_path, capsys):
    def struct(colour: int) -> dict[str, object]:
        return {
            "bytes": encode_png(Image.new("RGB", (4 + colour, 4), (colour, 0, 0))),
            "path": None,
        }

    path = tmp_path / "mixed.parquet"
    table = {
        "question": ["two images?", "no image?"],
        "image": [[struct(1), struct(2)], None],
        "answer": ["yes", "no"],
    }
    pq.write_table(pa.table(table), path)
    assert main(["data", "show", str(path), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "images" in out and "5x4" in out and "6x4" in out
    assert "(none: text-only)" in out
    assert main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 text-only, 1 with several images" in out and "Note:" in out
