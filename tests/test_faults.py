"""Fault injection (issue 17): every corruption verify must detect, every bad invocation must
end in the one-paragraph error (exit 1 or 2, no traceback), every unsafe resume is refused.

One tiny real capture (builtin:organism, 6 synthetic examples) is made per module and copied
per test, then damaged the way a crash, a full disk or a careless edit would.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from priorscope.cli.main import main
from priorscope.engine.errors import ConfigMismatchError, PriorscopeError
from priorscope.engine.store import open_store, verify
from priorscope.engine.store.verify import remove_leftovers

BASE = [
    "--ladder",
    "0.02",
    "--none",
    "--shard-examples",
    "2",
    "--batch-size",
    "3",
    "--max-new-tokens",
    "2",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    data = root / "b.tsv"
    assert main(["synth", "--out", str(data), "--n", "6", "--size", "56"]) == 0
    out = root / "s.zarr"
    args = ["capture", "--model", "builtin:organism", "--data", str(data), "--out", str(out)]
    assert main([*args, *BASE]) == 0
    return root


@pytest.fixture
def store(made: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "s.zarr"
    shutil.copytree(made / "s.zarr", dst)
    return dst


def first_chunk(store: Path, array: str) -> Path:
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())[0]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(len(path.read_bytes()) // 2, 1)])


def flip(path: Path, at: int = 5) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0x40
    path.write_bytes(bytes(b))


def edit_attrs(store: Path, change: Callable[[dict], None]) -> None:
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    change(doc["attributes"])
    meta.write_text(json.dumps(doc))


def _pop(key: str) -> Callable[[dict], None]:
    return lambda a: a.pop(key)


def _set(key: str, value) -> Callable[[dict], None]:
    return lambda a: a.__setitem__(key, value)


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "hidden_shard_deleted": lambda s: first_chunk(s, "hidden").unlink(),
    "hidden_shard_zero_bytes": lambda s: first_chunk(s, "hidden").write_bytes(b""),
    "hidden_shard_truncated": lambda s: truncate(first_chunk(s, "hidden")),
    "hidden_shard_flipped": lambda s: flip(first_chunk(s, "hidden"), 100),
    "score_truncated": lambda s: truncate(first_chunk(s, "outputs/score")),
    "score_flipped": lambda s: flip(first_chunk(s, "outputs/score")),
    "answer_truncated": lambda s: truncate(first_chunk(s, "outputs/answer")),
    "answer_flipped": lambda s: flip(first_chunk(s, "outputs/answer")),
    "raw_flipped": lambda s: flip(first_chunk(s, "outputs/raw")),
    "cand_logprob_truncated": lambda s: truncate(first_chunk(s, "outputs/cand_logprob")),
    "cand_logprob_deleted": lambda s: first_chunk(s, "outputs/cand_logprob").unlink(),
    "example_id_truncated": lambda s: truncate(first_chunk(s, "examples/id")),
    "example_id_deleted": lambda s: first_chunk(s, "examples/id").unlink(),
    "example_gold_flipped": lambda s: flip(first_chunk(s, "examples/gold")),
    "unembed_flipped": lambda s: flip(first_chunk(s, "unembed"), 50),
    "final_norm_truncated": lambda s: truncate(first_chunk(s, "final_norm/weight")),
    "commit_truncated": lambda s: truncate(first_chunk(s, "commit/done")),
    "commit_deleted_group": lambda s: shutil.rmtree(s / "commit"),
    "zarr_json_invalid_root": lambda s: (s / "zarr.json").write_text("{not json"),
    "zarr_json_invalid_array": lambda s: (s / "outputs/score/zarr.json").write_text("{"),
    "conditions_attr_deleted": lambda s: edit_attrs(s, _pop("conditions")),
    "conditions_attr_one_short": lambda s: edit_attrs(
        s, lambda a: a.__setitem__("conditions", a["conditions"][:-1])
    ),
    "condition_renamed": lambda s: edit_attrs(
        s, lambda a: a["conditions"][0].__setitem__("name", "sharp")
    ),
    "layout_attr_deleted": lambda s: edit_attrs(s, _pop("layout")),
    "candidates_edited": lambda s: edit_attrs(
        s, lambda a: a.__setitem__("candidates", list(reversed(a["candidates"])))
    ),
    "layers_edited": lambda s: edit_attrs(
        s, lambda a: a.__setitem__("layers", [v + 1 for v in a["layers"]])
    ),
    "d_model_edited": lambda s: edit_attrs(
        s, lambda a: a["layout"].__setitem__("d_model", a["layout"]["d_model"] * 2)
    ),
    "schema_version_future": lambda s: edit_attrs(s, _set("schema_version", 99)),
}


def no_traceback(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    return text


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_verify_detects_corruption(store: Path, kind: str, capsys) -> None:
    CORRUPTIONS[kind](store)
    rc = main(["store", "verify", str(store), "--deep"])
    text = no_traceback(capsys)
    assert rc in (1, 2), text
    assert not verify(store, deep=True).ok if kind != "zarr_json_invalid_root" else True


@pytest.mark.parametrize(
    "kind", ["commit_truncated", "zarr_json_invalid_root", "conditions_attr_deleted"]
)
@pytest.mark.parametrize("command", ["info", "decay", "report"])
def test_analyses_refuse_damaged_store(store: Path, kind: str, command: str, capsys) -> None:
    CORRUPTIONS[kind](store)
    args = {
        "info": ["store", "info", str(store)],
        "decay": ["decay", str(store)],
        "report": ["report", str(store), "--out", str(store.parent / "r.html")],
    }[command]
    rc = main(args)
    text = no_traceback(capsys)
    assert rc in (1, 2), text


def test_open_store_refuses_commit_deleted(store: Path) -> None:
    shutil.rmtree(store / "commit")
    with pytest.raises(PriorscopeError):
        open_store(store)


def test_clean_copy_verifies(store: Path) -> None:
    report = verify(store, deep=True)
    assert report.ok, report.problems


def capture_args(made: Path, out: Path, *extra: str) -> list[str]:
    data = made / "b.tsv"
    return ["capture", "--model", "builtin:organism", "--data", str(data), "--out", str(out)]


INVOCATIONS: dict[str, list[str]] = {
    "layers_out_of_range": ["--layers", "10:20"],
    "layers_range_clamped": ["--layers", "1:100"],
    "layers_single_out_of_range": ["--layers", "7"],
    "ladder_too_large": ["--ladder", "1e6"],
    "device_tpu": ["--device", "tpu"],
    "shard_malformed": ["--shard", "5/2"],
}


@pytest.mark.parametrize("kind", sorted(INVOCATIONS))
def test_bad_invocation_creates_nothing(made: Path, tmp_path: Path, kind: str, capsys) -> None:
    out = tmp_path / "new.zarr"
    extra = INVOCATIONS[kind]
    base = [a for a in BASE if not (kind == "ladder_too_large" and a in ("--ladder", "0.02"))]
    if kind == "device_tpu":
        base = base[: base.index("--device")] + base[base.index("--device") + 2 :]
    rc = main([*capture_args(made, out), *base, *extra])
    text = no_traceback(capsys)
    assert rc in (1, 2), text
    assert not out.exists(), f"{kind}: a store was created before the options were validated"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new.zarr.creating")]


@pytest.mark.parametrize("kind", ["existing_file", "existing_zarr_array"])
def test_out_names_something_else(made: Path, tmp_path: Path, kind: str, capsys) -> None:
    out = tmp_path / "taken"
    if kind == "existing_file":
        out.write_text("mine")
    else:
        shutil.copytree(made / "s.zarr" / "unembed", out)
    rc = main([*capture_args(made, out), *BASE])
    text = no_traceback(capsys)
    assert rc in (1, 2), text


@pytest.mark.parametrize("kind", ["json_under_file", "report_under_file", "json_readonly"])
def test_outputs_into_unwritable_place(store: Path, tmp_path: Path, kind: str, capsys) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if kind == "json_under_file":
            args = ["decay", str(store), "--json", str(blocker / "d.json")]
        elif kind == "json_readonly":
            if os.geteuid() == 0:
                args = ["decay", str(store), "--json", str(blocker / "x" / "d.json")]
            else:
                args = ["decay", str(store), "--json", str(ro / "d.json")]
        else:
            args = ["report", str(store), "--out", str(blocker / "r.html")]
        rc = main(args)
    finally:
        ro.chmod(0o755)
    text = no_traceback(capsys)
    assert rc in (1, 2), text


def test_resume_refuses_changed_weights(made: Path, tmp_path: Path) -> None:
    """A checkpoint changed at the same path must not be resumed into (names both hashes)."""
    from priorscope.engine.capture.setup import check_weights
    from priorscope.engine.models import load_model

    shutil.copytree(made / "s.zarr", tmp_path / "s.zarr")
    adapter = load_model("builtin:organism", device="cpu", dtype="float32")
    group = open_store(tmp_path / "s.zarr").group
    check_weights(group, adapter, str(tmp_path / "s.zarr"))  # the same weights pass
    with __import__("torch").no_grad():
        next(adapter.model.parameters()).add_(1.0)
    adapter.name_or_path = str(tmp_path / "not_a_folder")  # hash the (changed) state dict
    with pytest.raises(ConfigMismatchError, match="sha256"):
        check_weights(group, adapter, str(tmp_path / "s.zarr"))


def plant_leftovers(store: Path, age_s: float) -> tuple[Path, Path]:
    creating = store.parent / f".{store.name}.creating-deadbeef"
    (creating / "hidden").mkdir(parents=True)
    partial = store / "hidden" / "c" / "0.1234abcd.partial"
    partial.write_bytes(b"half")
    old = time.time() - age_s
    for p in (partial, creating / "hidden", creating):
        os.utime(p, (old, old))
    return creating, partial


def test_repair_removes_old_leftovers_only(store: Path) -> None:
    creating, partial = plant_leftovers(store, age_s=5)
    assert remove_leftovers(store) == []  # young: maybe a live writer's, kept
    assert creating.exists() and partial.exists()
    os.utime(partial, (time.time() - 600, time.time() - 600))
    for p in (creating / "hidden", creating):
        os.utime(p, (time.time() - 600, time.time() - 600))
    assert sorted(remove_leftovers(store)) == sorted([str(creating), str(partial)])
    assert not creating.exists() and not partial.exists()
    assert verify(store, deep=True).ok


def test_resume_removes_leftovers(made: Path, store: Path, capsys) -> None:
    creating, partial = plant_leftovers(store, age_s=600)
    assert main([*capture_args(made, store), *BASE]) == 0
    no_traceback(capsys)
    assert not creating.exists() and not partial.exists()


def test_verify_repair_removes_leftovers(store: Path, capsys) -> None:
    creating, partial = plant_leftovers(store, age_s=600)
    assert main(["store", "verify", str(store), "--repair"]) == 0
    out = no_traceback(capsys)
    assert "removed" in out and "complete" in out
    assert not creating.exists() and not partial.exists()


def test_schema_1_store_still_reads(store: Path) -> None:
    """Stores written before checksums (schema 1) open and verify; their shards still write."""
    import numpy as np
    import zarr

    from priorscope.engine.store.shardio import write_region

    edit_attrs(store, _set("schema_version", 1))
    assert open_store(store).n_examples == 6
    assert verify(store).ok
    group = zarr.open_group(str(store / "old.zarr"), mode="w")
    arr = group.create_array(
        "x", shape=(4, 3, 5), dtype="float32", chunks=(2, 1, 5), shards=(2, 3, 5),
        compressors=None, fill_value=0,
    )  # fmt: skip
    data = np.random.default_rng(1).standard_normal((2, 3, 5)).astype(np.float32)
    write_region(arr, 2, data)
    np.testing.assert_array_equal(arr[2:4], data)


def test_checksummed_shard_equals_zarr_writer(tmp_path: Path) -> None:
    """The fast shard writer's bytes decode (CRCs checked) to what zarr's own writer stores."""
    import numpy as np
    import zarr

    from priorscope.engine.store.layout import new_array
    from priorscope.engine.store.shardio import write_region

    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="w")
    dims = ("example", "condition", "layer", "d")
    a, b = (
        new_array(group, n, (8, 3, 2, 5), "float32", (4, 1, 1, 5), dims, shards=(4, 3, 2, 5))
        for n in ("a", "b")
    )
    data = np.random.default_rng(0).standard_normal((4, 3, 2, 5)).astype(np.float32)
    a[4:8] = data
    write_region(b, 4, data)
    np.testing.assert_array_equal(b[4:8], a[4:8])
    shard = tmp_path / "a.zarr" / "b" / "c" / "1" / "0" / "0" / "0"
    assert shard.stat().st_size == (tmp_path / "a.zarr/a/c/1/0/0/0").stat().st_size
    flip(shard, 7)
    with pytest.raises(ValueError, match="checksum"):
        b[4:8]


RESUMES: dict[str, tuple[str | None, list[str]]] = {
    "resume_on_truncated_commit": ("commit_truncated", []),
    "resume_on_invalid_json": ("zarr_json_invalid_array", []),
    "resume_changed_ladder": (None, ["--ladder", "0.03"]),
    "resume_changed_layers": (None, ["--layers", "0,1"]),
    "resume_changed_reductions": (None, ["--reductions", "last"]),
}


@pytest.mark.parametrize("kind", sorted(RESUMES))
def test_resume_refuses(made: Path, store: Path, kind: str, capsys) -> None:
    """A resume into a damaged store, or with options that would mix results, is refused."""
    corruption, extra = RESUMES[kind]
    if corruption:
        CORRUPTIONS[corruption](store)
    base = [a for a in BASE if not (extra and extra[0] == "--ladder" and a in ("--ladder", "0.02"))]
    rc = main([*capture_args(made, store), *base, *extra])
    text = no_traceback(capsys)
    assert rc in (1, 2), text
