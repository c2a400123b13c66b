"""Benchmark Qwen2-VL preprocessing: the image processor on the host vs tensor ops on a device.

Issue 15's lever "keep the condition images on the device from the blur to the model": the
processor's resize (Pillow, bicubic), rescale, normalise and patchify as tensor ops
(``engine.models.qwen2_vl.device_pixel_values``), checked bitwise equal to the processor here
on every timed batch. Measured side by side in one run, per batch of N condition images of one
size, medians of R repeats:

* **processor**: PIL images in, ``pixel_values`` out on the host (what capture does today;
  on a GPU run add the blurred images' copy to the host and the result's copy back);
* **tensor ops on DEVICE**: uint8 images already on DEVICE in, ``pixel_values`` out on DEVICE.

Qwen's default pixel bounds (3136 .. 12845056); sizes that need no resize (448 x 448) and
that do (480 x 640 -> 476 x 644). One thread on the CPU.

    OMP_NUM_THREADS=1 python benchmarks/preprocess.py [--device cuda]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from priorscope.engine.models.qwen2_vl import device_pixel_values
from priorscope.engine.models.registry import load_model
from priorscope.engine.models.tiny import build_tiny

RESULTS = Path(__file__).resolve().parent / "results" / "preprocess.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    processor: Any, size: tuple[int, int], n: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    rng = np.random.default_rng([*size, n])
    images = rng.integers(0, 256, size=(n, *size, 3), dtype=np.uint8)
    pil = [Image.fromarray(i) for i in images]
    on_device = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    host, ops = [], []
    for _ in range(repeats):  # interleaved, so both see the same load
        _sync(device)
        t0 = time.perf_counter()
        if device.type == "cuda":  # capture's host path: blurred images to the host and back
            pil = [Image.fromarray(i) for i in on_device.permute(0, 2, 3, 1).cpu().numpy()]
        want = processor(pil, return_tensors="pt")["pixel_values"].to(device)
        _sync(device)
        host.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got, _ = device_pixel_values(processor, on_device)
        _sync(device)
        ops.append(time.perf_counter() - t0)
        if not torch.equal(got, want):
            raise SystemExit(f"tensor ops differ from the processor at {size}: not comparable")
    h, o = statistics.median(host), statistics.median(ops)
    return {
        "size": list(size),
        "images": n,
        "processor_ms": 1e3 * h,
        "tensor_ops_ms": 1e3 * o,
        "speedup": h / o,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        processor = load_model(
            str(build_tiny("qwen2_5_vl", Path(tmp) / "m"))
        ).processor.image_processor
        rows = [
            measure(processor, size, args.images, args.repeats, device)
            for size in ((448, 448), (480, 640))
        ]
    print(f"| size | images | processor (ms) | tensor ops on {device.type} (ms) | speedup |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['size'][0]}x{r['size'][1]} | {r['images']} | {r['processor_ms']:.1f} | {r['tensor_ops_ms']:.1f} | {r['speedup']:.2f}x |"
        )
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu, 1 thread",
        "command": f"python benchmarks/preprocess.py --device {args.device}",
        "bitwise_equal": True,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
