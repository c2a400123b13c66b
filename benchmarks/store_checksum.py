"""What the per-chunk CRC-32C (schema 2, issue 17) costs when writing a store.

Same shape as the store I/O section of benchmarks/capture.py (Qwen2.5-VL-3B: 37 sites x 9
conditions x 3 reductions x 2048 bf16 bits, 16 examples per shard). Measured side by side in
one run, alternating: (1) encoding one full shard with and without inner-chunk CRCs; (2) a
whole store written through ShardWriter (with CRCs, as capture now writes it) and fsynced,
against ``dd conv=fdatasync`` of the same size.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/store_checksum.py [--examples 128]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from capture import dd_mb_per_s, io_layout, timed_store_write

from priorscope.engine.store.shardio import encode_shard


def encode_ms(shard: np.ndarray, chunk: tuple[int, ...], crc: bool, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode_shard(shard, chunk, chunk_crc=crc)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-json", default="benchmarks/results/store_checksum.json")
    args = ap.parse_args()
    layout = io_layout(args.examples)
    shape = layout.hidden_shape()
    rng = np.random.default_rng(0)
    shard = rng.integers(0, 2**16, size=(16, *shape[1:]), dtype=np.uint16)
    chunk = (16, 1, 1, shape[3], shape[4])
    bare, crc = [], []
    for _ in range(5):  # alternate so machine load falls on both alike
        bare += encode_ms(shard, chunk, False, 1)
        crc += encode_ms(shard, chunk, True, 1)
    block = rng.integers(0, 2**16, size=(8, *shape[1:]), dtype=np.uint16)
    mb = args.examples * layout.bytes_per_example() / 1e6
    work = Path(tempfile.mkdtemp(prefix="crc-bench-"))
    write, dd = [], []
    try:
        for _ in range(args.repeats):
            shutil.rmtree(work / "io.zarr", ignore_errors=True)
            write.append(mb / timed_store_write(work / "io.zarr", layout, block))
            dd.append(dd_mb_per_s(work, int(mb)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {
        "shard_mb": shard.nbytes / 1e6,
        "encode_ms_without_crc": statistics.median(bare),
        "encode_ms_with_crc": statistics.median(crc),
        "store_mb": mb,
        "store_write_mb_s_with_crc": statistics.median(write),
        "dd_fdatasync_mb_s": statistics.median(dd),
        "write_fraction_of_disk": statistics.median(write) / statistics.median(dd),
        "store_write_mb_s_all": write,
        "dd_fdatasync_mb_s_all": dd,
    }
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(res, indent=2) + "\n")
    print("| measure | value |\n| --- | ---: |")
    print(
        f"| encode one {res['shard_mb']:.0f} MB shard, no CRC (median of 5) | {res['encode_ms_without_crc']:.1f} ms |"
    )
    print(
        f"| encode the same shard, CRC-32C per inner chunk (median of 5) | {res['encode_ms_with_crc']:.1f} ms |"
    )
    print(
        f"| store write with CRCs, {mb:.0f} MB (median of {args.repeats}) | {res['store_write_mb_s_with_crc']:.0f} MB/s {[round(v) for v in write]} |"
    )
    print(
        f"| dd with fdatasync (median of {args.repeats}) | {res['dd_fdatasync_mb_s']:.0f} MB/s {[round(v) for v in dd]} |"
    )
    print(f"| store write / raw disk | {100 * res['write_fraction_of_disk']:.0f}% |")
    print(f"wrote {args.out_json}")


if __name__ == "__main__":
    main()
