"""Benchmark capture: plain forward vs priorscope capture vs a naive capture, store I/O vs disk.

In one run on the same inputs (a random-weight Qwen2.5-VL-architecture model, synthetic images):

* **plain**: encode + ``generate`` for every (batch, condition), no hooks, no store (the blurred
  images are prepared beforehand and not timed);
* **priorscope**: ``priorscope.engine.capture.capture`` end to end (blur ladder, hooks, scoring,
  background writer, commit), and its loop alone (end to end minus the fixed cost measured by a
  no-op resume of the finished store);
* **naive**: ``model(**batch, output_hidden_states=True)``, every layer's full sequence ``.cpu()``
  and ``np.save`` per batch, plus ``generate`` for the answers.

Then store I/O at Qwen2.5-VL-3B shape (37 sites x 9 conditions x 3 reductions x 2048, bf16):
MB/s of the shard writer (including an fsync of every store file) against ``dd ... conv=fdatasync`` on the
same disk in the same run, and a cold read of one layer for every example against a flat
``np.memmap`` of the same array (page cache evicted with ``posix_fadvise(DONTNEED)``).

    OMP_NUM_THREADS=1 python benchmarks/capture.py                 # CPU, medium model
    python benchmarks/capture.py --model-size 3b --device cuda --examples 256 --out-json \\
        benchmarks/results/capture_gpu.json                          # GPU check (random 3B)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their pools

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.capture.images import condition_images
from priorscope.engine.capture.plan import make_plan
from priorscope.engine.data import load, synth
from priorscope.engine.models.configs import QwenSizes, qwen_vl_model, qwen_vl_processor
from priorscope.engine.models.wordlevel import word_tokenizer
from priorscope.engine.store import (
    BatchRows,
    ShardWriter,
    StoreLayout,
    create_store,
    open_for_capture,
    open_store,
)

RESULTS = Path(__file__).resolve().parent / "results" / "capture.json"
SIZES = {
    # name: (text hidden, layers, heads, kv heads, mlp, vision depth, vision hidden, image px, vocab)
    "medium": (512, 8, 8, 4, 1376, 4, 256, 224, None),
    "3b": (2048, 36, 16, 2, 11008, 32, 1280, 448, 151936),
}


def qwen_sizes(size: str) -> QwenSizes:
    """Return the shared builder's sizes of a random-weight Qwen2.5-VL model of ``size``."""
    d, layers, heads, kv, mlp, vdepth, vhidden, _, vocab = SIZES[size]
    return QwenSizes(
        d_model=d,
        layers=layers,
        heads=heads,
        kv_heads=kv,
        ffn=mlp,
        vision_depth=vdepth,
        vision_width=vhidden,
        vision_heads=vhidden // 64,
        window=112,
        fullatt_blocks=(vdepth // 2 - 1, vdepth - 1),
        max_positions=4096,
        rope_theta=1e6,
        vocab_size=vocab,
    )


def build_adapter(size: str, device: str, dtype: str) -> Any:
    """Return an adapter over a random-weight Qwen2.5-VL model of ``size``, built on ``device``.

    Built in memory (not saved and reloaded): a 3B checkpoint would cost a 7 GB write and a
    state-dict hash, neither of which is what this benchmark measures. The weights hash in the
    store's provenance is therefore replaced by a fixed label.
    """
    from priorscope.engine.models.qwen2_5_vl import Qwen2_5_VLAdapter
    from priorscope.engine.models.qwen2_vl import QWEN_CHAT_TEMPLATE

    tok = word_tokenizer("qwen")
    processor = qwen_vl_processor("qwen2_5_vl", tok, SIZES[size][7], QWEN_CHAT_TEMPLATE)
    torch.manual_seed(0)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    with torch.device(device):
        model = qwen_vl_model(
            "qwen2_5_vl", tok, qwen_sizes(size), dtype=torch_dtype, attn_implementation="sdpa"
        )
    model.eval()

    class BenchAdapter(Qwen2_5_VLAdapter):
        def weights_sha256(self) -> str:
            return f"random-init seed 0 ({size})"

    return BenchAdapter(model, processor, f"random:qwen2_5_vl-{size}")


def make_data(n: int, size: int, out: Path) -> Path:
    """Return a synthetic TSV of ``n`` multiple-choice rows with ``size`` x ``size`` images."""
    return synth.write_tsv(synth.generate(synth.SynthConfig(n=n, size=size, mc=True)), out)


def prepared_batches(
    adapter: Any, cfg: CaptureConfig
) -> list[tuple[list[Any], dict[str, list[Any]]]]:
    """Return (examples, images per condition) per batch, in store order (not timed)."""
    examples = list(load(cfg.data).examples)
    plan = make_plan(examples, 0)
    ordered = [plan.example_at(i) for i in range(len(examples))]
    out = []
    for start in range(0, len(ordered), cfg.batch_size):
        batch = ordered[start : start + cfg.batch_size]
        out.append((batch, condition_images(batch, cfg.conditions(), adapter.device)))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timer:
    """Wall-clock and process CPU seconds of a block (CPU time includes the writer thread).

    On a shared CPU machine other jobs inflate wall-clock times at random; the process's CPU
    time counts only work this benchmark did, so CPU-device comparisons use it.
    """

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    def as_dict(self) -> dict[str, float]:
        return {"wall": self.wall, "cpu": self.cpu}


def run_plain(adapter: Any, batches: list, cfg: CaptureConfig) -> dict[str, float]:
    """Return wall and CPU seconds for encode + generate over every batch and condition."""
    timer = Timer().__enter__()
    for examples, images in batches:
        for cond in cfg.conditions():
            batch = adapter.encode(examples, images[cond.name])
            adapter.generate(batch, max_new_tokens=cfg.max_new_tokens)
    sync(adapter.device)
    timer.__exit__()
    return timer.as_dict()


def run_naive(adapter: Any, batches: list, cfg: CaptureConfig, folder: Path) -> dict[str, float]:
    """Return wall and CPU seconds of the naive capture (all states to the host, np.save)."""
    folder.mkdir(parents=True, exist_ok=True)
    timer = Timer().__enter__()
    for b, (examples, images) in enumerate(batches):
        for cond in cfg.conditions():
            batch = adapter.encode(examples, images[cond.name])
            with torch.no_grad():
                out = adapter.model(**batch, output_hidden_states=True)
            states = torch.stack([h.float().cpu() for h in out.hidden_states], dim=1)
            np.save(folder / f"batch{b}_{cond.name}.npy", states.numpy())
            adapter.generate(batch, max_new_tokens=cfg.max_new_tokens)
    sync(adapter.device)
    timer.__exit__()
    return timer.as_dict()


def run_capture(adapter: Any, cfg: CaptureConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Return wall and CPU seconds end to end, and of a no-op resume of the finished store."""
    shutil.rmtree(cfg.out, ignore_errors=True)
    with Timer() as total:
        capture(cfg, adapter=adapter)
        sync(adapter.device)
    with Timer() as noop:
        capture(cfg, adapter=adapter)
    return total.as_dict(), noop.as_dict()


def dd_mb_per_s(folder: Path, mb: int) -> float:
    """Return dd's write speed (MB/s) for ``mb`` MiB with fdatasync on ``folder``'s disk."""
    target = folder / "dd.bin"
    proc = subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mb}", "conv=fdatasync"],
        capture_output=True,
        text=True,
        check=True,
    )
    target.unlink()
    match = re.search(r"(\d+) bytes .* copied, ([0-9.]+) s", proc.stderr)
    if not match:
        raise RuntimeError(f"Could not parse dd output: {proc.stderr!r}")
    return int(match.group(1)) / float(match.group(2)) / 1e6


def fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` to disk (os.sync would flush other jobs' data too)."""
    for f in [path] if path.is_file() else path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def evict(path: Path) -> None:
    """Drop ``path``'s files (or the file itself) from the page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def io_layout(n_examples: int) -> StoreLayout:
    """Return the layout of a Qwen2.5-VL-3B capture: 37 sites x 9 conditions x 3 reductions."""
    return StoreLayout(
        n_examples,
        tuple(f"c{i}" for i in range(9)),
        tuple(range(-1, 36)),
        ("last", "image_mean", "text_mean"),
        2048,
        ("A", "B", "C", "D"),
        "bfloat16",
        16,
    )


def timed_store_write(path: Path, layout: StoreLayout, block: np.ndarray) -> float:
    """Return the seconds to write and fsync a whole store of random bf16 bits via ShardWriter."""
    conds = [{"name": c, "kind": "clean", "sigma": 0.0} for c in layout.conditions]
    n, c = layout.n_examples, len(layout.conditions)
    create_store(
        path,
        layout,
        {"conditions": conds, "config": {}},
        {"id": list(map(str, range(n)))},
        np.zeros((4, 2048), np.float32),
        {"weight": np.ones(2048)},
    )
    group = open_for_capture(path)
    writer = ShardWriter(group, layout, list(range(layout.n_shards)))
    t0 = time.perf_counter()
    for start in range(0, n, len(block)):
        idx = np.arange(start, min(start + len(block), n))
        b = len(idx)
        writer.put(
            BatchRows(
                idx,
                np.full((b, c), "A", object),
                np.full((b, c), "A", object),
                np.ones((b, c), bool),
                np.ones((b, c), np.float32),
                np.zeros((b, c, 4), np.float32),
                hidden=block[:b],
            )
        )
    writer.close()
    fsync_tree(path)  # like dd's fdatasync: the data is on disk when the clock stops
    return time.perf_counter() - t0


def store_io(folder: Path, n_examples: int, repeats: int = 3) -> dict[str, float]:
    """Return write MB/s (store vs dd) and cold one-layer read ms (store vs memmap) at 3B shape.

    Store writes and dd runs alternate ``repeats`` times so that other jobs' disk traffic falls
    on both alike; the figures are medians.
    """
    layout = io_layout(n_examples)
    block = np.random.default_rng(0).integers(
        0, 2**16, size=(8, *layout.hidden_shape()[1:]), dtype=np.uint16
    )
    mb_total = n_examples * layout.bytes_per_example() / 1e6
    path = folder / "io.zarr"
    write_s, dd = [], []
    for _ in range(repeats):
        shutil.rmtree(path, ignore_errors=True)
        write_s.append(timed_store_write(path, layout, block))
        dd.append(dd_mb_per_s(folder, int(mb_total)))
    store_mb_s = [mb_total / s for s in write_s]
    flat = np.lib.format.open_memmap(
        folder / "flat.npy", mode="w+", dtype=np.uint16, shape=layout.hidden_shape()
    )
    for start in range(0, n_examples, 8):
        flat[start : start + 8] = block[: min(8, n_examples - start)]
    flat.flush()
    del flat
    fsync_tree(folder / "flat.npy")
    store_ms, mm_ms = [], []
    for layer in (3, 20, 33):
        evict(path)
        t0 = time.perf_counter()
        got = open_store(path).hidden(layer=layer - 1, include_uncommitted=True)
        store_ms.append((time.perf_counter() - t0) * 1e3)
        evict(folder / "flat.npy")
        t0 = time.perf_counter()
        ref = np.array(np.load(folder / "flat.npy", mmap_mode="r")[:, :, layer])
        mm_ms.append((time.perf_counter() - t0) * 1e3)
        assert got.shape[0] == ref.shape[0] == n_examples
    return {
        "hidden_mb": mb_total,
        "store_write_mb_s": statistics.median(store_mb_s),
        "dd_fdatasync_mb_s": statistics.median(dd),
        "write_fraction_of_disk": statistics.median(store_mb_s) / statistics.median(dd),
        "store_write_mb_s_all": store_mb_s,
        "dd_fdatasync_mb_s_all": dd,
        "cold_read_one_layer_ms": statistics.median(store_ms),
        "cold_read_memmap_ms": statistics.median(mm_ms),
        "read_ratio_store_over_memmap": statistics.median(store_ms) / statistics.median(mm_ms),
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-size", choices=sorted(SIZES), default="medium")
    p.add_argument("--examples", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--ladder", default="0.02,0.08")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--io-examples", type=int, default=128)
    p.add_argument("--naive-examples", type=int, default=0, help="0: all examples")
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="time base of the comparisons (default: process CPU time on cpu, wall on cuda)",
    )
    p.add_argument("--workdir", default=None, help="folder on the disk to measure (default: tmp)")
    p.add_argument("--out-json", default=str(RESULTS))
    return p.parse_args()


def main() -> None:
    args = parse_args()
    args.clock = args.clock or ("cpu" if args.device == "cpu" else "wall")
    if args.device == "cpu":
        torch.set_num_threads(1)
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    work = Path(tempfile.mkdtemp(prefix="capture-bench-", dir=args.workdir))
    try:
        results = benchmark(args, dtype, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"wrote {args.out_json}")


def benchmark(args: argparse.Namespace, dtype: str, work: Path) -> dict[str, Any]:
    """Return every measurement of one benchmark run."""
    px = SIZES[args.model_size][7]
    adapter = build_adapter(args.model_size, args.device, dtype)
    data = make_data(args.examples, px, work / "bench.tsv")
    cfg = CaptureConfig(
        model=adapter.name_or_path,
        data=str(data),
        out=str(work / "run.zarr"),
        ladder=tuple(float(s) for s in args.ladder.split(",")),
        total=True,
        batch_size=args.batch_size,
        device=args.device,
        dtype=dtype,
        max_new_tokens=args.max_new_tokens,
        progress=False,
    )
    batches = prepared_batches(adapter, cfg)
    run_plain(adapter, batches[:1], cfg)  # warm-up (allocator, kernels)
    # The naive capture writes every layer's full sequence; at 3B size that is ~1.5 GB per
    # batch and condition, so it may run on a prefix of the batches (rates are per example).
    n_naive_batches = -(
        -min(args.naive_examples or args.examples, args.examples) // args.batch_size
    )
    n_naive = min(n_naive_batches * args.batch_size, args.examples)
    plain, naive, total, noop = [], [], [], []
    for _ in range(args.repeats):
        plain.append(run_plain(adapter, batches, cfg))
        t, n = run_capture(adapter, cfg)
        total.append(t)
        noop.append(n)
        naive.append(run_naive(adapter, batches[:n_naive_batches], cfg, work / "naive"))
        shutil.rmtree(work / "naive", ignore_errors=True)
    store = open_store(cfg.out)
    n_rows = args.examples * len(cfg.conditions())
    samples = {"plain": plain, "capture": total, "noop": noop, "naive": naive}
    medians = {
        clock: {k: statistics.median(x[clock] for x in v) for k, v in samples.items()}
        for clock in ("wall", "cpu")
    }
    med = medians[args.clock]
    loop = med["capture"] - med["noop"]
    return {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else "cpu (1 thread)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": vars(args),
        "model": {
            "size": args.model_size,
            "d_model": adapter.d_model,
            "layers": adapter.num_layers,
            "dtype": dtype,
            "image_px": px,
        },
        "conditions": [c.name for c in cfg.conditions()],
        "stored_hidden_shape": list(store.group["hidden"].shape),
        "clock": args.clock,
        "seconds_median": medians,
        "examples_per_s": {
            "plain": args.examples / med["plain"],
            "capture": args.examples / med["capture"],
            "capture_loop": args.examples / loop,
            "naive": n_naive / med["naive"],
        },
        "forwards": n_rows,
        "capture_overhead_end_to_end": med["capture"] / med["plain"] - 1,
        "capture_overhead_loop": loop / med["plain"] - 1,
        "naive_examples": n_naive,
        "speedup_over_naive": (args.examples / med["capture"]) / (n_naive / med["naive"]),
        "io": store_io(work, args.io_examples),
        "all_seconds": samples,
    }


def print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        caption=f"rates and ratios use {r['clock']} time (medians of {r['args']['repeats']})",
        title=f"capture benchmark: {r['model']['size']} model on {r['device']} "
        f"({r['args']['examples']} examples x {len(r['conditions'])} conditions)",
    )
    for col in ("measure", "value"):
        t.add_column(col)
    eps = r["examples_per_s"]
    io = r["io"]
    rows = [
        ("plain forward (encode+generate)", f"{eps['plain']:.2f} ex/s"),
        ("priorscope capture, end to end", f"{eps['capture']:.2f} ex/s"),
        ("priorscope capture, loop only", f"{eps['capture_loop']:.2f} ex/s"),
        ("naive capture", f"{eps['naive']:.2f} ex/s"),
        ("overhead over plain (end to end)", f"{100 * r['capture_overhead_end_to_end']:+.1f}%"),
        ("overhead over plain (loop)", f"{100 * r['capture_overhead_loop']:+.1f}%"),
        ("speed-up over naive", f"{r['speedup_over_naive']:.2f}x"),
        ("store write (3B shape, bf16, incl. sync)", f"{io['store_write_mb_s']:.0f} MB/s"),
        ("dd conv=fdatasync, same disk", f"{io['dd_fdatasync_mb_s']:.0f} MB/s"),
        ("store write / raw disk", f"{100 * io['write_fraction_of_disk']:.0f}%"),
        ("cold read, one layer, all examples", f"{io['cold_read_one_layer_ms']:.1f} ms"),
        ("cold read, flat memmap", f"{io['cold_read_memmap_ms']:.1f} ms"),
        ("store / memmap read time", f"{io['read_ratio_store_over_memmap']:.2f}x"),
    ]
    for row in rows:
        t.add_row(*row)
    Console().print(t)


if __name__ == "__main__":
    main()
