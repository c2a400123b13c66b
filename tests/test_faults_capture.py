"""Fault injection during capture (issue 17, items 7, 10, 11): bad images, Ctrl-C, full disks.

A bad image is a counted skip (``--on-bad skip``) or one clear error that says so; Ctrl-C and a
full or read-only disk end in a message that says what was kept and how to resume; the ranks of
a sharded capture say what they own. Real processes, real signals, real (namespaced) mounts.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from store_support import assert_stores_bitwise_equal

from priorscope.cli.main import main
from priorscope.engine.analysis.decay import compute_decay
from priorscope.engine.data import synth
from priorscope.engine.store import info, open_store, verify
from priorscope.engine.store.writer import FAULT_ENV

BAD = 3  # dataset row (and store row: one image size keeps the order) with a truncated PNG
BASE = [
    "--model",
    "builtin:organism",
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
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}


def write_data(path: Path, n: int, truncated: tuple[int, ...] = (), drop: tuple[int, ...] = ()):
    """Write n synthetic rows; ``truncated`` rows get half their PNG (the header still reads)."""
    rows = synth.generate(synth.SynthConfig(n=n, size=56))
    cut = [
        dataclasses.replace(ex, image_bytes=ex.image_bytes[: len(ex.image_bytes) // 2])
        if i in truncated
        else ex
        for i, ex in enumerate(rows)
    ]
    return synth.write_tsv([ex for i, ex in enumerate(cut) if i not in drop], path)


def capture(data: Path, out: Path, *extra: str) -> list[str]:
    return ["capture", "--data", str(data), "--out", str(out), *BASE, *extra]


def cli(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    """Run ``python -m priorscope.cli ARGS`` in a real process."""
    cmd = [sys.executable, "-m", "priorscope.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=kw.pop("env", ENV), **kw)


def no_traceback(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 6-row benchmark whose row 3 is a truncated PNG, and its --on-bad skip capture."""
    root = tmp_path_factory.mktemp("faults_capture")
    data = write_data(root / "b.tsv", 6, truncated=(BAD,))
    ref = root / "skip.zarr"
    assert main(capture(data, ref, "--on-bad", "skip")) == 0
    return SimpleNamespace(root=root, data=data, ref=ref)


# ---- item 7: an image that fails at decode time ----------------------------------------------


def test_decode_failure_names_on_bad_skip_then_resume_equals_uninterrupted(
    made: SimpleNamespace, tmp_path: Path, capsys
) -> None:
    """--on-bad error stops at the bad image naming it and the fix; the fix then resumes to a
    store bitwise equal to an uninterrupted --on-bad skip capture."""
    out = tmp_path / "s.zarr"
    assert main(capture(made.data, out)) == 1
    text = no_traceback(capsys)
    assert "'3'" in text and "--on-bad skip" in text and "truncated" in text, text
    assert 0 < open_store(out).finished().sum() < 6  # the other shards are kept
    assert main(capture(made.data, out, "--on-bad", "skip")) == 0
    assert "Skipped examples: 1" in no_traceback(capsys)
    assert_stores_bitwise_equal(made.ref, out)


def test_skipped_example_is_counted_and_verify_calls_the_store_complete(
    made: SimpleNamespace, capsys
) -> None:
    report = verify(made.ref, deep=True)
    assert report.ok and report.n_committed == 6, report.problems
    assert len(report.skipped) == 1 and "id '3'" in report.skipped[0]
    summary = info(made.ref)
    assert summary["skipped"] == 1 and summary["committed"] == 6
    assert main(["store", "verify", str(made.ref), "--deep"]) == 0
    assert "1 of them skipped" in no_traceback(capsys)
    assert main(["store", "info", str(made.ref)]) == 0
    assert "skipped" in no_traceback(capsys)


def test_every_reader_leaves_the_skipped_example_out(made: SimpleNamespace) -> None:
    store = open_store(made.ref)
    assert store.committed().tolist() == [i != BAD for i in range(6)]
    assert store.skipped().tolist() == [i == BAD for i in range(6)]
    table = store.examples()
    assert BAD not in table.rows and "3" not in table.ids
    assert table.n_skipped == 1 and table.n_uncommitted == 0
    assert store.hidden().shape[0] == 5 and np.isfinite(store.outputs("cand_logprob")).all()
    chunk_rows = np.concatenate([r for r, _ in store.iter_hidden_chunks(0, "clean")])
    assert BAD not in chunk_rows
    from priorscope.engine.store import read_hidden_chunk

    worker_rows = [read_hidden_chunk(t)[0] for t in store.hidden_chunk_tasks(0, "clean")]
    assert BAD not in np.concatenate(worker_rows)


def test_decay_with_a_skip_equals_decay_without_that_example(
    made: SimpleNamespace, tmp_path: Path
) -> None:
    data = write_data(tmp_path / "five.tsv", 6, drop=(BAD,))
    out = tmp_path / "five.zarr"
    assert main(capture(data, out)) == 0
    with_skip, without = compute_decay(made.ref).to_json(), compute_decay(out).to_json()
    for doc in (with_skip, without):
        doc.pop("store")
        for example in doc["examples"]:
            example.pop("row")  # store rows shift by one past the dropped example; ids do not
    assert with_skip.keys() == without.keys()
    flat = [json.dumps(d, sort_keys=True) for d in (with_skip, without)]
    if flat[0] != flat[1]:  # equal up to float rounding of the per-example values
        a, b = (np.array(_numbers(d), dtype=float) for d in (with_skip, without))
        np.testing.assert_allclose(a, b, rtol=1e-5)


def _numbers(doc) -> list[float]:
    if isinstance(doc, dict):
        return [x for k in sorted(doc) for x in _numbers(doc[k])]
    if isinstance(doc, list):
        return [x for v in doc for x in _numbers(v)]
    if isinstance(doc, bool) or doc is None or isinstance(doc, str):
        return []
    return [float(doc)]


def test_rerun_does_not_retry_a_skipped_example(made: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(made.ref, out)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(capture(made.data, out, "--on-bad", "skip")) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files


def test_killed_skip_capture_resumes_bitwise_equal(made: SimpleNamespace, tmp_path: Path) -> None:
    """SIGKILL after the bad example's shard is written but before its commit, then resume."""
    out = tmp_path / "s.zarr"
    args = capture(made.data, out, "--on-bad", "skip")
    proc = cli(args, env={**ENV, FAULT_ENV: "arrays:1"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not open_store(out).finished()[BAD]
    assert main(args) == 0
    assert_stores_bitwise_equal(made.ref, out)


def test_load_time_bad_row_is_skipped_when_asked(tmp_path: Path, capsys) -> None:
    """An image Pillow cannot even identify fails at load time: the error's advice works."""
    data = write_data(tmp_path / "b.tsv", 4)
    lines = data.read_text().splitlines()
    header = lines[0].split("\t")
    cells = lines[2].split("\t")
    cells[header.index("image")] = base64.b64encode(b"not an image at all").decode()
    lines[2] = "\t".join(cells)
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "s.zarr"
    assert main(capture(data, out)) == 1
    assert "--on-bad skip" in no_traceback(capsys) and not out.exists()
    assert main(capture(data, out, "--on-bad", "skip")) == 0
    no_traceback(capsys)
    store = open_store(out)
    assert store.n_examples == 3 and store.attrs["dataset"]["skipped"] == 1
    assert verify(out).ok


def test_skip_with_full_sequences_and_gradients(made: SimpleNamespace, tmp_path: Path, capsys):
    """A bad image among the --full-seq examples: refused before anything is written with the
    advice, then skipped (full-sequence and gradient rows included) under --on-bad skip."""
    out = tmp_path / "s.zarr"
    extra = ("--full-seq", "6", "--grad")
    assert main(capture(made.data, out, *extra)) == 1
    assert "--on-bad skip" in no_traceback(capsys) and not out.exists()
    assert main(capture(made.data, out, *extra, "--on-bad", "skip")) == 0
    no_traceback(capsys)
    assert verify(out, deep=True).ok
    store = open_store(out)
    assert store.grad_last(0).shape[0] == 5 and np.isfinite(store.grad_last(0)).all()
    assert np.isfinite(store.fullseq(2).values).all()
    with pytest.raises(Exception, match="skipped by capture"):
        store.fullseq(BAD)


def test_skip_refuses_to_skip_everything(tmp_path: Path, capsys) -> None:
    """Every image bad: a systematic fault, not bad data; the capture stops and says so."""
    data = write_data(tmp_path / "b.tsv", 20, truncated=tuple(range(20)))
    assert main(capture(data, tmp_path / "s.zarr", "--on-bad", "skip")) == 1
    assert "all of the first 16 skipped" in no_traceback(capsys)


# ---- item 5: a model folder without a processor ----------------------------------------------


@pytest.mark.parametrize("kind", ["processor_files_deleted", "text_only_config"])
def test_model_folder_without_processor(
    made: SimpleNamespace, tmp_path: Path, kind: str, capsys
) -> None:
    folder = tmp_path / "model"
    if kind == "processor_files_deleted":
        from priorscope.engine.models.tiny import build_tiny

        build_tiny("qwen2_5_vl", folder)
        for name in ("preprocessor_config.json", "processor_config.json", "chat_template.jinja"):
            (folder / name).unlink(missing_ok=True)
    else:
        folder.mkdir()
        config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64}
        (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "s.zarr"
    args = capture(made.data, out)
    args[args.index("builtin:organism")] = str(folder)
    assert main(args) == 1
    text = no_traceback(capsys)
    assert "processor" in text and str(folder) in text and "--model" in text, text
    assert not out.exists()


# ---- item 11: Ctrl-C and full or read-only disks ---------------------------------------------


def _interruptible() -> None:
    """Give the child Ctrl-C back: a process inherits an ignored or blocked SIGINT across exec
    (an earlier test's native library can leave it so in the test process), and Python then
    never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    """Wait until ``path`` exists (the capture committed a shard) while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the capture did not commit a shard in time"
        time.sleep(0.02)


LONG = 400  # rows of long_data


@pytest.fixture(scope="module")
def long_data(made: SimpleNamespace) -> Path:
    """Enough rows that a capture is still running well after its first commit, even on a busy
    2-core machine."""
    return write_data(made.root / "long.tsv", LONG)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_says_what_was_kept_and_how_to_resume(
    long_data: Path, tmp_path: Path, presses: int
) -> None:
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "priorscope.cli", *capture(long_data, out)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=_interruptible,
    )
    wait_for(out / "commit" / "done" / "c" / "0", proc)
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=120)
    text = stdout + stderr
    assert proc.returncode == 130, text
    assert "Traceback" not in text, text
    store = open_store(out)
    kept = int(store.finished().sum())
    assert 0 < kept < LONG
    if presses == 1:
        assert f"Kept: {kept} of {LONG} examples committed" in text, text
        command = text.split("The command: ")[1].split("\n")[0].strip()
        args = command.split(" -m priorscope.cli ")[1].split()
        assert args == capture(long_data, out)
    else:
        assert "Stopped at once" in text or "Capture interrupted" in text, text
    assert main(capture(long_data, out)) == 0  # the same command resumes
    assert verify(out, deep=True).ok


DISK_SCRIPT = """
D=$1; shift
mount -t tmpfs -o size=1800k tmpfs "$D" || exit 99
"$PY" -m priorscope.cli "$@"; echo "RC_FULL=$?"
mount -o remount,ro "$D" || exit 98
"$PY" -m priorscope.cli "$@"; echo "RC_READONLY=$?"
mount -o remount,rw,size=50m "$D" || exit 97
"$PY" -m priorscope.cli "$@"; echo "RC_RESUMED=$?"
"$PY" -m priorscope.cli store verify "$D/s.zarr" --deep; echo "RC_VERIFY=$?"
"""


def test_full_then_read_only_disk_advise_and_resume(made: SimpleNamespace, tmp_path: Path) -> None:
    """A real full tmpfs, then the same tmpfs read-only, then room: advice twice, then resume.

    The mount lives in a user and mount namespace of its own (``unshare -rm``): no root needed.
    """
    data = write_data(tmp_path / "b.tsv", 40)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "disk.sh"
    script.write_text(DISK_SCRIPT)
    args = capture(data, mnt / "s.zarr")[1:]
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", str(script), str(mnt)]
    proc = subprocess.run(
        [*cmd, "capture", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream: each message stays before its RC_ line
        text=True,
        timeout=600,
        env={**ENV, "PY": sys.executable},
    )
    text = proc.stdout
    assert proc.returncode == 0 and "Traceback" not in text, text
    full, rest = text.split("RC_FULL=")
    assert rest.startswith("1"), text
    assert "[Errno 28]" in full and "disk is full" in full and "Free space" in full, full
    assert "Kept: " in full and "The command: " in full, full
    readonly, rest = rest.split("RC_READONLY=")
    assert rest.startswith("1"), text
    assert "[Errno 30]" in readonly and "read-only" in readonly, readonly
    assert "RC_RESUMED=0" in text and "RC_VERIFY=0" in text, text


# ---- item 10: ranks that say what they do, shards that give every rank work -----------------


def test_four_ranks_on_300_examples_all_get_work(made: SimpleNamespace, tmp_path: Path, capsys):
    """Automatic shard size with --shard i/4 on 300 examples: every rank owns a shard, says so
    (prefixed with its rank) and the four together complete the store."""
    data = write_data(tmp_path / "b300.tsv", 300)
    out = tmp_path / "s.zarr"
    args = ["capture", "--data", str(data), "--out", str(out), "--model", "builtin:organism"]
    args += ["--ladder", "0.02", "--no-total", "--sites", "last", "--layers", "0"]
    args += ["--batch-size", "16", "--max-new-tokens", "1", "--device", "cpu", "--no-progress"]
    for rank in range(4):
        assert main([*args, "--shard", f"{rank}/4"]) == 0
        err = no_traceback(capsys)
        line = next(x for x in err.splitlines() if x.startswith(f"[rank {rank}/4] owns"))
        assert "owns no shard" not in line and "capturing 0" not in line, line
        assert f"[rank {rank}/4] done: wrote" in err, err
    store = open_store(out)
    assert store.shard_examples == 64 and verify(out).ok


def test_rank_without_rank0_says_it_waits(made: SimpleNamespace, tmp_path: Path, capsys) -> None:
    from priorscope.engine.capture import CaptureConfig
    from priorscope.engine.capture import capture as run_capture
    from priorscope.engine.errors import StoreError

    out = tmp_path / "s.zarr"
    cfg = CaptureConfig(
        model="builtin:organism",
        data=str(made.data),
        out=str(out),
        device="cpu",
        shard=(2, 4),
        wait_for_store_s=1.0,
        progress=False,
    )
    with pytest.raises(StoreError, match="rank 0"):
        run_capture(cfg)
    err = capsys.readouterr().err
    assert "[rank 2/4] waiting up to 1 s for rank 0 to create the store" in err, err


def test_rank_without_a_shard_says_so(made: SimpleNamespace, tmp_path: Path, capsys) -> None:
    """A user-chosen shard size too big for the ranks: the idle rank says why, not silence."""
    out = tmp_path / "s.zarr"
    args = capture(made.data, out, "--on-bad", "skip")
    args[args.index("--shard-examples") + 1] = "8"
    assert main([*args, "--shard", "0/2"]) == 0
    assert main([*args, "--shard", "1/2"]) == 0
    err = no_traceback(capsys)
    assert "[rank 1/2] owns no shard" in err and "--shard-examples" in err, err


def test_automatic_shard_size_gives_every_rank_a_shard() -> None:
    """Whenever there are at least as many examples as ranks, round robin leaves no rank idle."""
    from priorscope.engine.store import choose_shard_examples, rank_shards

    assert choose_shard_examples(1000, 300, 4) == 64
    assert choose_shard_examples(1000, 300, 1) == 512  # one rank: unchanged
    for world in (2, 3, 4, 7, 8):
        for n in (world, world + 1, 2 * world - 1, 300, 1023, 5000):
            size = choose_shard_examples(1000, n, world)
            n_shards = -(-n // size)
            assert all(rank_shards(n_shards, r, world) for r in range(world)), (n, world, size)
