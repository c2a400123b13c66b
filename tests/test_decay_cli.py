"""The decay, export-grounded and report commands: exit codes, files written, numbers printed."""

from __future__ import annotations

import json

import pytest
from store_support import synth_answer_store

from priorscope.cli.main import main
from priorscope.engine.data import Example, synth

N = 20


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    examples = synth.generate(synth.SynthConfig(n=N, seed=5, size=48))

    def answer_of(i: int, e: Example) -> list[str]:
        # Right on clean and blur@0.02 for every item; under total right on even rows only.
        g = e.answers[0]
        return [g, g, g if i % 2 == 0 else "zzz"]

    root = tmp_path_factory.mktemp("cli")
    return synth_answer_store(root, examples, ladder=(0.02,), answer_of=answer_of)


def test_decay_prints_and_writes_json(store, tmp_path, capsys) -> None:
    out = tmp_path / "d.json"
    assert (
        main(["decay", str(store), "--json", str(out), "--by", "category", "--n-boot", "50"]) == 0
    )
    printed = capsys.readouterr().out
    assert "Decay metrics" in printed and "synth/prior" in printed
    doc = json.loads(out.read_text())
    overall = next(g for g in doc["groups"] if g["category"] is None)
    assert overall["metrics"]["accuracy"]["total"]["value"] == pytest.approx(0.5)
    assert overall["metrics"]["blind_answerable"]["value"] == pytest.approx(0.5)


def test_export_grounded_writes_the_odd_rows(store, tmp_path, capsys) -> None:
    out = tmp_path / "g.tsv"
    # Every item is right under blur@0.02 (the severe level here), so require total only.
    assert main(["export-grounded", str(store), "--out", str(out), "--no-severe"]) == 0
    assert f"Wrote {N // 2} of {N}" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    source = (store.parent / "synth.tsv").read_text().splitlines()
    assert lines == [source[0], *(source[1 + i] for i in range(1, N, 2))]


def test_report_command(store, tmp_path, capsys) -> None:
    out = tmp_path / "r" / "report.html"
    assert (
        main(
            [
                "report",
                str(store),
                "--out",
                str(out),
                "--n-boot",
                "50",
                "--flipped",
                "1",
                "--invariant",
                "1",
            ]
        )
        == 0
    )
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert "Report:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["decay", "{s}", "--by", "template"], 2, "--by"),
        (["decay", "{t}/missing.zarr"], 1, "no such path"),
        (["export-grounded", "{s}", "--out", "{t}/x.tsv", "--severe", "blur@0.5"], 2, "blur@0.02"),
        (["report", "{s}", "--flipped", "99"], 2, "--flipped"),
        (["demo", "--seed", "7", "--out", "{t}/d"], 2, "held-out seed"),
    ],
)
def test_errors_exit_with_their_code_and_message(
    store, tmp_path, capsys, argv, code, needle
) -> None:
    args = [a.format(s=store, t=tmp_path) for a in argv]
    assert main(args) == code
    assert needle in capsys.readouterr().err
