"""Crash safety and scale-out: SIGKILL at several points then resume, two shard processes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from store_support import assert_stores_bitwise_equal
from test_capture import write_bench  # tests/ is on sys.path (rootdir-relative imports)

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.errors import ConfigMismatchError
from priorscope.engine.models.registry import load_model
from priorscope.engine.models.tiny import build_tiny
from priorscope.engine.store import open_store, verify
from priorscope.engine.store.writer import FAULT_ENV

OPTIONS = dict(
    ladder=(0.02, 0.08),
    none=True,
    full_seq=3,
    full_seq_layers="0,1",
    batch_size=2,
    max_new_tokens=3,
    shard_examples=2,
    hidden_dtype="bfloat16",
)


def cli_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "capture",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--ladder",
        "0.02,0.08",
        "--none",
        "--full-seq",
        "3",
        "--full-seq-layers",
        "0,1",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "3",
        "--shard-examples",
        "2",
        "--hidden-dtype",
        "bf16",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--no-progress",
        *extra,
    ]


def run_forked(cfg: CaptureConfig, adapter, fault: str | None = None) -> multiprocessing.Process:
    """Start ``capture`` in a forked child process (a real process, without re-importing torch)."""

    def child() -> None:
        if fault:
            os.environ[FAULT_ENV] = fault
        try:
            capture(cfg, adapter=adapter)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    return proc


def finish(proc: multiprocessing.Process, timeout: float = 120) -> None:
    """Wait for a child; kill it (and fail) if it hangs, so the suite never does."""
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail(f"capture child {proc.pid} did not finish within {timeout} s")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("resume")
    data = write_bench(root / "bench.tsv")
    model = build_tiny("qwen2_5_vl", root / "model")
    adapter = load_model(str(model), device="cpu", dtype="float32")
    ref = root / "ref.zarr"
    cfg = CaptureConfig(
        model=str(model),
        data=str(data),
        out=str(ref),
        progress=False,
        device="cpu",
        dtype="float32",
        **OPTIONS,
    )  # type: ignore[arg-type]
    capture(cfg, adapter=adapter)
    return SimpleNamespace(root=root, data=data, model=model, adapter=adapter, ref=ref, cfg=cfg)


def test_sigkill_at_several_points_then_resume_is_bitwise_equal(setup) -> None:
    root, adapter, ref, cfg = setup.root, setup.adapter, setup.ref, setup.cfg
    out = root / "crashy.zarr"
    reference = open_store(ref)
    committed_before = 0
    # Die after the second shard's hidden array (one shard committed before), then after all
    # arrays of a shard but before its commit: where a real crash leaves a half-written shard.
    crashy = dataclasses.replace(cfg, out=str(out))
    for fault in ("hidden:1", "arrays:1"):
        proc = run_forked(crashy, adapter, fault)
        finish(proc)
        assert proc.exitcode == -signal.SIGKILL
        store = open_store(out)
        done = store.committed()
        assert committed_before < done.sum() < done.size
        committed_before = int(done.sum())
        # A reader sees only committed examples, and they are final.
        assert np.array_equal(
            store.hidden(), reference.hidden(include_uncommitted=True)[done], equal_nan=True
        )
        raw = reference.outputs("raw", include_uncommitted=True)[done]
        assert store.outputs("raw").tolist() == raw.tolist()
        assert not verify(out).ok
    capture(crashy, adapter=adapter)
    assert verify(out, deep=True).ok
    assert_stores_bitwise_equal(ref, out)


def test_two_shard_processes_write_one_store(setup) -> None:
    root, adapter, ref, cfg = setup.root, setup.adapter, setup.ref, setup.cfg
    out = root / "sharded.zarr"
    procs = [
        run_forked(
            dataclasses.replace(cfg, out=str(out), shard=(r, 2), wait_for_store_s=60), adapter
        )
        for r in (1, 0)  # rank 1 first: it must wait for rank 0 to create the store
    ]
    reference = open_store(ref).hidden(include_uncommitted=True)
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if (out / "zarr.json").exists():
            store = open_store(out)
            done = store.committed()
            # A reader during the writes sees only committed examples, already final.
            now = store.hidden(include_uncommitted=True)[done]
            assert np.array_equal(now, reference[done], equal_nan=True)
            assert len(store.hidden(layer=0)) >= done.sum()
        time.sleep(0.05)
    for p in procs:
        finish(p)
        assert p.exitcode == 0
    assert verify(out, deep=True).ok
    assert_stores_bitwise_equal(ref, out)


def test_resume_with_another_configuration_is_refused(setup) -> None:
    adapter, cfg = setup.adapter, setup.cfg
    other = dataclasses.replace(cfg, ladder=(0.02, 0.16), max_new_tokens=5)
    with pytest.raises(ConfigMismatchError) as info:
        capture(other, adapter=adapter)
    message = str(info.value)
    assert "ladder: store has [0.02, 0.08], this run asks for [0.02, 0.16]" in message
    assert "max_new_tokens: store has 3, this run asks for 5" in message
    # Progress and "automatic" shard size do not change what the store holds.
    capture(dataclasses.replace(cfg, progress=False, shard_examples=0), adapter=adapter)
    # Another batch size changes left padding, so a resume would not be bitwise equal: refused.
    with pytest.raises(ConfigMismatchError, match="batch_size: store has 2, this run asks for 5"):
        capture(dataclasses.replace(cfg, batch_size=5), adapter=adapter)


def test_resume_into_a_store_of_another_example_order_is_refused(setup) -> None:
    """A store whose rows are in another order (an older ordering) is never resumed into."""
    import shutil

    import zarr

    out = setup.root / "reordered.zarr"
    shutil.copytree(setup.ref, out)
    cfg = dataclasses.replace(setup.cfg, out=str(out))
    capture(cfg, adapter=setup.adapter)  # the same order: a complete store, nothing to do
    ids = zarr.open_array(str(out / "examples" / "id"), mode="r+")
    before = ids[:].tolist()
    ids[:2] = [before[1], before[0]]
    with pytest.raises(ConfigMismatchError) as info:
        capture(cfg, adapter=setup.adapter)
    message = str(info.value)
    assert f"examples/id[0] is {str(before[1])!r} in the store" in message
    assert f"this run puts {str(before[0])!r} there" in message
    assert "capture into another --out" in message
    ids[:2] = before[:2]
    rows = zarr.open_array(str(out / "examples" / "source_row"), mode="r+")
    rows[0] = rows[0] + 100
    with pytest.raises(ConfigMismatchError, match=r"examples/source_row\[0\] is '1\d\d' in"):
        capture(cfg, adapter=setup.adapter)


def test_cli_capture_equals_api_and_store_commands(setup, capsys) -> None:
    from priorscope.cli.main import main

    out = setup.root / "cli.zarr"
    assert main(cli_args(setup.model, setup.data, out)) == 0
    assert_stores_bitwise_equal(setup.ref, out)
    assert main(["store", "verify", str(out), "--deep"]) == 0
    assert main(["store", "info", str(out), "--json"]) == 0
    assert '"committed": 8' in capsys.readouterr().out
    # Another ladder into the same store: refused with exit 1, naming what differs.
    args = cli_args(setup.model, setup.data, out)
    args[args.index("0.02,0.08")] = "0.02,0.16"
    assert main(args) == 1
    assert (
        "ladder: store has [0.02, 0.08], this run asks for [0.02, 0.16]" in capsys.readouterr().err
    )


def test_an_error_mid_capture_keeps_committed_shards_and_surfaces(setup, monkeypatch) -> None:
    adapter, cfg = setup.adapter, setup.cfg
    out = setup.root / "error.zarr"
    real_generate = adapter.generate
    calls = {"n": 0}

    def generate_then_fail(batch, *, max_new_tokens):
        calls["n"] += 1
        if calls["n"] > 2:  # two forwards per batch (image conditions, none); one batch a shard
            raise RuntimeError("CUDA out of memory (injected)")
        return real_generate(batch, max_new_tokens=max_new_tokens)

    monkeypatch.setattr(adapter, "generate", generate_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        capture(dataclasses.replace(cfg, out=str(out)), adapter=adapter)
    monkeypatch.undo()
    assert open_store(out).committed().tolist() == [True, True] + [False] * 6
    capture(dataclasses.replace(cfg, out=str(out)), adapter=adapter)
    assert_stores_bitwise_equal(setup.ref, out)
