"""Fold groups: every example sharing an image stays in one fold, whatever identity the store has.

A capture store records each example's image hash (``examples/image_sha256``); for stores
written before it did, the probe driver reads the image bytes back from the benchmark file the
store names and hashes them the same way; these tests build that file for real (a
VLMEvalKit TSV from the synthetic generator, several questions per image), capture it with the
built-in organism, and check the split the probe run would use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from capture_support import capture_examples

from priorscope.engine.errors import UsageError, did_you_mean
from priorscope.engine.probes import ProbeConfig
from priorscope.engine.probes.splits import (
    BYTES,
    assign_folds,
    dataset_image_keys,
    group_keys,
    split_note,
)


def _shared_image_examples(n: int, per_image: int) -> list:
    """Return ``n`` synthetic examples where each run of ``per_image`` shares one image."""
    from priorscope.engine.data.synth import SynthConfig, generate

    examples = generate(SynthConfig(n=n, seed=7, size=84, templates=("color",)))
    return [
        dataclasses.replace(ex, image_bytes=examples[i - i % per_image].image_bytes)
        for i, ex in enumerate(examples)
    ]


def _table_column(columns: dict[str, np.ndarray]) -> Callable[[str], np.ndarray]:
    """Return a lookup that, like ExampleTable.column, refuses names it does not have."""

    def column(name: str) -> np.ndarray:
        if name not in columns:
            raise did_you_mean(name, sorted(columns), "example column")
        return columns[name]

    return column


def test_bytes_read_back_from_the_benchmark_file_group_shared_images(tmp_path: Path) -> None:
    from priorscope.engine.capture.plan import file_sha256
    from priorscope.engine.data.synth import write_tsv

    examples = _shared_image_examples(30, 3)
    data = write_tsv(examples, tmp_path / "shared.tsv")
    attrs = {"config": {"data": {"path": str(data), "sha256": file_sha256(data)}}}
    ids = [ex.id for ex in examples] + ["not-in-the-file"]
    keys, why = dataset_image_keys(attrs, ids)
    assert why == "" and keys is not None
    assert keys[-1] is None  # an id the file lacks: no key (it becomes its own group)
    for i in range(30):
        assert (keys[i] == keys[i - i % 3]) and (i % 3 == 0 or keys[i] != keys[i - 3])
    assert len(set(keys[:30].tolist())) == 10

    grouped, by = group_keys(ids, ["template"], _table_column({}), "auto", lambda: (keys, why))
    assert by == BYTES
    split = assign_folds(grouped, 5, seed=3, group_by=by, note=split_note(by))
    for first in range(0, 30, 3):
        assert len(set(split.fold[first : first + 3].tolist())) == 1
    assert split.n_groups == 11 and split.summary()["note"] == ""

    # The file changed since the capture, or is gone: no keys, and the reason says which.
    data.write_text(data.read_text() + "\n")
    assert dataset_image_keys(attrs, ids)[0] is None
    assert "changed" in dataset_image_keys(attrs, ids)[1]
    data.unlink()
    assert "not there" in dataset_image_keys(attrs, ids)[1]
    assert "names no benchmark file" in dataset_image_keys({}, ids)[1]


def test_auto_prefers_a_recorded_image_column_then_bytes_then_item_ids() -> None:
    ids = tuple(f"e{i}" for i in range(12))
    images = np.array([f"img{i // 2}" for i in range(12)], dtype=object)
    item = np.array([f"q{i // 4}" if i < 8 else None for i in range(12)], dtype=object)
    calls = []

    def from_bytes() -> tuple[np.ndarray | None, str]:
        calls.append(1)
        return None, "its benchmark file 'x.tsv' is not there"

    # A table field named like a capture-side hash is used even though it is no metadata key.
    column = _table_column({"image_sha256": images, "source_id": item})
    keys, by = group_keys(ids, ["source_id"], column, "auto", from_bytes)
    assert by == "image_sha256" and not calls
    assert len(set(keys.tolist())) == 6
    # Dataset image names come next, still before reading the benchmark file.
    keys, by = group_keys(ids, ["imageId"], _table_column({"imageId": images}), "auto", from_bytes)
    assert by == "imageId" and not calls
    # Nothing recorded and no file: the benchmark's repeated item ids, blanks on their own.
    keys, by = group_keys(
        ids, ["source_id"], _table_column({"source_id": item}), "auto", from_bytes
    )
    assert by == "source_id" and calls == [1]
    assert len(set(keys.tolist())) == 2 + 4
    note = split_note(by, "its benchmark file 'x.tsv' is not there")
    assert "may sit in different folds" in note and "not there" in note
    assert group_keys(ids, [], _table_column({}), "auto")[1] == "id"
    with pytest.raises(UsageError, match="example column"):
        group_keys(ids, [], _table_column({}), "imgid")


def test_a_captured_store_groups_its_folds_by_image_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from priorscope.engine.probes.run import build_plan
    from priorscope.engine.store import open_store

    examples = _shared_image_examples(24, 4)
    store = capture_examples(tmp_path, "shared", examples, reductions=("last",), batch_size=24)
    data = tmp_path / "shared.tsv"
    st = open_store(store).snapshot()
    cfg = ProbeConfig(targets=("gold",), kinds="ridge", folds=3, min_class=1)
    image_of = {ex.id: i // 4 for i, ex in enumerate(examples)}

    def check_grouped(plan: object, split: object) -> None:
        assert split.n_groups == 6 and split.note == ""  # type: ignore[attr-defined]
        folds: dict[int, set[int]] = {}
        ids = st.examples().ids
        for example_id, f in zip(ids, plan.fold.tolist(), strict=True):  # type: ignore[attr-defined]
            folds.setdefault(image_of[example_id], set()).add(f)
        assert all(len(f) == 1 for f in folds.values()) and len(folds) == 6

    # The capture records each example's image identity: the split uses it directly.
    table = st.examples()
    assert len(set(table.image_sha256)) == 6 and table.column("image_sha256")[0] != ""
    assert table.image_sha256[0] == examples[int(table.source_row[0])].images_sha256
    plan, _, split = build_plan(st, cfg, str(tmp_path / "p.zarr"))
    assert split.group_by == "image_sha256"
    check_grouped(plan, split)
    # A store written before that column existed: the bytes are read back from the file.
    import shutil

    shutil.rmtree(store / "examples" / "image_sha256")
    st = open_store(store).snapshot()
    assert st.examples().image_sha256 == (None,) * 24
    plan, _, split = build_plan(st, cfg, str(tmp_path / "p2.zarr"))
    assert split.group_by == BYTES
    check_grouped(plan, split)
    # Without the benchmark file the split falls back to one group per example and says so.
    data.unlink()
    _, _, fallback = build_plan(open_store(store).snapshot(), cfg, str(tmp_path / "q.zarr"))
    assert fallback.group_by == "id" and fallback.n_groups == 24
    assert "not there" in fallback.note
    # ... and `probe info` passes that on.
    import typer
    from rich.console import Console
    from typer.testing import CliRunner

    from priorscope.cli import probe

    monkeypatch.setattr(probe, "console", Console(width=400))  # no line wrapping
    app = typer.Typer()
    probe.register(app)
    runner = CliRunner()
    out = str(tmp_path / "cli.probes.zarr")
    args = ["probe", str(store), "--out", out, "--targets", "gold", "--kinds", "ridge"]
    res = runner.invoke(app, [*args, "--folds", "3", "--min-class", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["probe", "info", out])
    assert res.exit_code == 0, res.output
    assert "grouped by 'id'" in res.output and "may sit in different folds" in res.output
