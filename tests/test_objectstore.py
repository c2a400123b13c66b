"""Caches on object storage: capture, kill, resume, verify, info, decay and a sweep on s3://.

A real S3-compatible server (moto's standalone server from PyPI) runs on 127.0.0.1 for the
session; the client side is the real s3fs/zarr stack. Credentials and the endpoint come from
the environment (as for any AWS tool), never from the command line or the store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from priorscope.cli.main import main
from priorscope.engine.data import synth
from priorscope.engine.models.tiny import build_tiny
from priorscope.engine.store import open_store, verify
from priorscope.engine.store.writer import FAULT_ENV

BUCKET = "priorscope-test"
SECRET = "w-secret-5c1e9b"  # must never appear in a store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3() -> Iterator[str]:
    """Start moto's S3 server on a free local port; yield the bucket URL; stop it at the end."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not answer on {endpoint}")
                time.sleep(0.2)
        with pytest.MonkeyPatch.context() as mp:
            # The standard variables of botocore (which s3fs uses): subprocesses inherit them.
            mp.setenv("AWS_ACCESS_KEY_ID", "priorscope-test-key")
            mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            s3fs.S3FileSystem().mkdir(BUCKET)
            yield f"s3://{BUCKET}"
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        server.terminate()
        server.wait(10)


def write_bench(path: Path) -> Path:
    small = synth.generate(synth.SynthConfig(n=5, size=56, mc=True))
    large = synth.generate(synth.SynthConfig(n=3, seed=1, size=84))
    rows = [small[0], large[0], small[1], small[2], large[1], small[3], large[2], small[4]]
    rows = [dataclasses.replace(ex, id=f"r{i}") for i, ex in enumerate(rows)]
    return synth.write_tsv(rows, path)


def capture_args(setup: SimpleNamespace, out: str, *extra: str) -> list[str]:
    return [
        "capture",
        "--model",
        str(setup.model),
        "--data",
        str(setup.data),
        "--out",
        out,
        "--ladder",
        "0.04",
        "--none",
        "--full-seq",
        "2",
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
        "bf16",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("objectstore")
    with pytest.MonkeyPatch.context() as mp:
        # A URL mistaken for a local path must land here, never in the working tree.
        mp.chdir(root)
        yield _setup(root)


def _setup(root: Path) -> SimpleNamespace:
    ns = SimpleNamespace(root=root, data=write_bench(root / "bench.tsv"))
    ns.model = build_tiny("qwen2_5_vl", root / "model")
    ns.ref = str(root / "ref.zarr")
    assert main(capture_args(ns, ns.ref)) == 0
    return ns


def cli_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "priorscope.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        return proc.communicate(timeout=timeout)[0].decode()
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{proc.args} did not finish within {timeout} s")


def assert_same(ref: str, url: str) -> None:
    """Every array of the URL store bitwise equal to the local reference's."""
    a, b = zarr.open_group(ref, mode="r"), zarr.open_group(url, mode="r")
    names = sorted(n for n, x in a.members(max_depth=None) if isinstance(x, zarr.Array))
    assert names == sorted(n for n, x in b.members(max_depth=None) if isinstance(x, zarr.Array))
    for name in names:
        x, y = np.asarray(a[name][...]), np.asarray(b[name][...])  # type: ignore[index]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.kind == "f":
            assert np.array_equal(x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}")), name
        else:
            assert np.array_equal(x, y), name
    skip = {"created", "capture_options"}
    attrs = [{k: v for k, v in g.attrs.items() if k not in skip} for g in (a, b)]
    assert json.dumps(attrs[0], sort_keys=True) == json.dumps(attrs[1], sort_keys=True)


def test_capture_into_s3_then_verify_and_info(s3, setup, capsys) -> None:
    url = f"{s3}/x.zarr"
    assert main(capture_args(setup, url)) == 0
    assert_same(setup.ref, url)
    assert main(["store", "verify", url, "--deep"]) == 0
    assert "complete: 8 examples committed" in capsys.readouterr().out
    assert main(["store", "info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == url and info["committed"] == info["examples"] == 8
    assert info["disk_bytes"] > 0  # object sizes, summed through the filesystem


def test_kill_then_resume_on_s3(s3, setup) -> None:
    url = f"{s3}/killed.zarr"
    # SIGKILL after every array of the second shard but before its commit.
    proc = cli_process(capture_args(setup, url), {FAULT_ENV: "arrays:1"})
    output = finish(proc)
    assert proc.returncode == -signal.SIGKILL, output
    done = open_store(url).committed()
    assert 0 < done.sum() < done.size
    assert not verify(url).ok
    assert main(["store", "verify", url]) == 1
    proc = cli_process(capture_args(setup, url))  # the same command again
    output = finish(proc)
    assert proc.returncode == 0, output
    assert verify(url, deep=True).ok
    assert_same(setup.ref, url)


def test_two_ranks_write_one_s3_store(s3, setup) -> None:
    url = f"{s3}/ranks.zarr"
    procs = [cli_process(capture_args(setup, url, "--shard", f"{r}/2")) for r in (1, 0)]
    for proc in procs:
        output = finish(proc)
        assert proc.returncode == 0, output
    assert verify(url, deep=True).ok
    assert_same(setup.ref, url)


def test_decay_of_an_s3_store_equals_local(s3, setup, tmp_path) -> None:
    url = f"{s3}/decay.zarr"
    assert main(capture_args(setup, url)) == 0
    remote, local = tmp_path / "remote.json", tmp_path / "local.json"
    common = ["--by", "category", "--n-boot", "50"]
    assert main(["decay", url, *common, "--json", str(remote)]) == 0
    assert main(["decay", setup.ref, *common, "--json", str(local)]) == 0
    a, b = json.loads(remote.read_text()), json.loads(local.read_text())
    assert a.pop("store") == url and b.pop("store") == setup.ref
    assert a == b


def test_sweep_with_stores_on_s3(s3, setup, tmp_path) -> None:
    toml = tmp_path / "s3sweep.toml"
    toml.write_text(
        f'root = "{s3}/sweep"\nout = "{tmp_path / "out"}"\nwait_s = 60\n'
        f'[[models]]\nname = "tiny"\npath = "{setup.model}"\n'
        f'[[benchmarks]]\nname = "bench"\nfile = "{setup.data}"\n'
        "[conditions]\nladder = [0.04]\nnone = true\n"
        "[capture]\nbatch_size = 2\nmax_new_tokens = 3\nshard_examples = 2\ndevice = 'cpu'\n"
        "dtype = 'float32'\nhidden_dtype = 'bfloat16'\nfull_seq = 2\nfull_seq_layers = '0,1'\n"
        "[analyses]\nn_boot = 50\n"
    )
    assert main(["sweep", str(toml)]) == 0
    assert_same(setup.ref, f"{s3}/sweep/tiny/bench.zarr")
    doc = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [(r["model"], r["benchmark"], r["n"]) for r in doc["rows"]] == [("tiny", "bench", 8)]
    assert (tmp_path / "out" / doc["rows"][0]["report"]).is_file()
    assert main(["sweep", str(toml), "--status"]) == 0


def test_no_credentials_in_any_store_object(s3, setup) -> None:
    import s3fs

    assert main(capture_args(setup, f"{s3}/creds.zarr")) == 0
    fs = s3fs.S3FileSystem()
    keys = [k for k in fs.find(BUCKET) if k.endswith("zarr.json")]
    assert any(k.startswith(f"{BUCKET}/creds.zarr/") for k in keys)
    for key in keys:
        assert SECRET not in fs.cat(key).decode(), key


def test_interrupted_store_creation_is_redone(s3, setup) -> None:
    import s3fs

    url = f"{s3}/interrupted.zarr"
    assert main(capture_args(setup, url, "--limit", "2")) == 0
    # An upload cut short before its last object: everything but the root group's zarr.json.
    s3fs.S3FileSystem().rm(f"{BUCKET}/interrupted.zarr/zarr.json")
    assert main(capture_args(setup, url, "--limit", "2")) == 0
    assert verify(url, deep=True).ok
    # Objects of anything else under the prefix are somebody's data: refused.
    other = f"{s3}/foreign.zarr"
    s3fs.S3FileSystem().pipe(f"{BUCKET}/foreign.zarr/notes.txt", b"mine")
    assert main(capture_args(setup, other)) == 1
