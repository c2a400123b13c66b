"""The decay, export-grounded and report commands: exit codes, files written, numbers printed."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from priorscope.cli.main import main
from priorscope.engine.analysis.answer_store import write_answer_store
from priorscope.engine.conditions import build_conditions
from priorscope.engine.data import synth

N = 20


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cli")
    examples = synth.generate(synth.SynthConfig(n=N, seed=5, size=48))
    tsv = synth.write_tsv(examples, root / "s.tsv")
    gold = [e.answers[0] for e in examples]
    # Right on clean and blur@0.02 for every item; under total right on even rows only.
    answer = np.array([[g, g, g if i % 2 == 0 else "zzz"] for i, g in enumerate(gold)])
    score = (answer == np.array(gold)[:, None]).astype(np.float32)
    return write_answer_store(
        root / "s.zarr",
        conditions=build_conditions((0.02,), total=True),
        ids=[e.id for e in examples],
        gold=[[g] for g in gold],
        answer=answer,
        score=score,
        benchmark="synth",
        category=[e.category for e in examples],
        source_row=list(range(N)),
        attrs={
            "dataset": {
                "files": [str(tsv)],
                "format": "vlmevalkit-tsv",
                "count": N,
                "sha256": hashlib.sha256(tsv.read_bytes()).hexdigest(),
            }
        },
    )


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
    source = (store.parent / "s.tsv").read_text().splitlines()
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
