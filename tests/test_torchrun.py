"""torchrun capture on CPU: 2 ranks write one store equal to a single-process capture, bitwise.

``torchrun --nproc_per_node 2 $(which priorscope) capture ...``: each rank reads RANK and
WORLD_SIZE, owns whole example shards and writes them into the one store rank 0 created; no
coordinator. A rank SIGKILLed mid-write is resumed by running the same command again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from store_support import assert_stores_bitwise_equal

from priorscope.cli.main import main
from priorscope.engine.data import synth
from priorscope.engine.models.tiny import build_tiny
from priorscope.engine.store import open_store, verify
from priorscope.engine.sweep.run import rank_device

BIN = Path(sys.executable).parent


def write_bench(path: Path) -> Path:
    """Write 8 rows in two image sizes (store order differs from file order)."""
    small = synth.generate(synth.SynthConfig(n=5, size=56, mc=True))
    large = synth.generate(synth.SynthConfig(n=3, seed=1, size=84))
    rows = [small[0], large[0], small[1], small[2], large[1], small[3], large[2], small[4]]
    rows = [dataclasses.replace(ex, id=f"r{i}") for i, ex in enumerate(rows)]
    return synth.write_tsv(rows, path)


def capture_args(model: Path, data: Path, out: Path) -> list[str]:
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
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--hidden-dtype",
        "fp32",
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("torchrun")
    data = write_bench(root / "bench.tsv")
    model = build_tiny("qwen2_5_vl", root / "model")
    ref = root / "ref.zarr"
    assert main(capture_args(model, data, ref)) == 0
    return SimpleNamespace(root=root, data=data, model=model, ref=ref)


def torchrun(script: Path, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``torchrun --standalone --nproc_per_node 2 SCRIPT ARGS``; return its output."""
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script), *args]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "500", **(env or {})},
    )
    return f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_torchrun_two_ranks_equal_one_process_bitwise(setup) -> None:
    out = setup.root / "two.zarr"
    priorscope = shutil.which("priorscope", path=str(BIN))
    assert priorscope is not None
    log = torchrun(Path(priorscope), capture_args(setup.model, setup.data, out))
    assert log.startswith("rc=0"), log
    # Both ranks ran: each printed the store state when its own shards were done.
    assert log.count(f"Store {out}") == 2, log
    # ... and each said on stderr what it owns and what it did, prefixed with its rank.
    for rank in (0, 1):
        assert f"[rank {rank}/2] owns 2 of 4 shards" in log, log
        assert f"[rank {rank}/2] done: wrote 2 shards (4 examples)" in log, log
    assert verify(out, deep=True).ok
    assert_stores_bitwise_equal(setup.ref, out)


def test_killed_rank_is_resumed_by_the_same_command(setup) -> None:
    out = setup.root / "killed.zarr"
    # The same entry point as the console script; rank KILL_RANK SIGKILLs itself after writing
    # every array of its second shard but before committing it (PRIORSCOPE_FAULT_INJECT).
    script = setup.root / "priorscope_rank.py"
    script.write_text(
        "import os\n"
        "if os.environ.get('RANK') == os.environ.get('KILL_RANK'):\n"
        "    os.environ['PRIORSCOPE_FAULT_INJECT'] = 'arrays:1'\n"
        "from priorscope.cli.main import entrypoint\n"
        "entrypoint()\n"
    )
    args = capture_args(setup.model, setup.data, out)
    log = torchrun(script, args, env={"KILL_RANK": "1"})
    assert not log.startswith("rc=0"), log
    store = open_store(out)
    done = store.committed()
    assert 0 < done.sum() < done.size
    assert not done[6:8].any()  # rank 1's second shard (examples 6, 7) was never committed
    assert not verify(out).ok
    log = torchrun(script, args)
    assert log.startswith("rc=0"), log
    assert verify(out, deep=True).ok
    assert_stores_bitwise_equal(setup.ref, out)


def test_each_rank_takes_its_local_rank_device() -> None:
    import torch

    assert rank_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"
    want = f"cuda:{1 % max(torch.cuda.device_count(), 1)}" if torch.cuda.is_available() else "cpu"
    assert rank_device("auto", {"LOCAL_RANK": "1"}) == want
