"""GPU benchmark of the blur ladder: 256 RGB images 448x448, full default ladder, vs kornia.

Reports images per second for priorscope (uint8 and float32 in, same dtype out) and kornia
(float32, one ``gaussian_blur2d`` per sigma) on the same GPU, and the fraction of the byte floor:
the time to read every input once and write every output once at the device's measured copy
bandwidth, divided by the measured time. Writes JSON to $OUT/blur_gpu.json when OUT is set, else
to benchmarks/results/blur_gpu.json.

    python benchmarks/blur_gpu.py [--batch 256] [--size 448] [--repeats 5]
    python benchmarks/blur_gpu.py --device cpu --batch 2 --size 64 --out /tmp  # smoke run
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from priorscope.engine.conditions import DEFAULT_LADDER
from priorscope.kernels import blur_ladder


def device_ms(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Return the median wall time of ``fn`` in ms after a warm-up (CUDA events on CUDA)."""
    fn()
    if device == "cpu":  # the --device cpu smoke run checks the script itself, not speed
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(repeats: int, device: str) -> float:
    """Return the device's achieved copy bandwidth in bytes/s (read + write of 1 GiB on CUDA)."""
    src = torch.empty(2**30 if device != "cpu" else 2**26, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = device_ms(lambda: dst.copy_(src), repeats, device)
    return 2 * src.numel() / (ms / 1e3)


def kornia_ladder(x: torch.Tensor, sigmas_px: list[float]) -> list[torch.Tensor]:
    """Return kornia's blur of ``x [B, C, H, W]`` float32 at each sigma, plus the channel mean."""
    import kornia.filters

    out = []
    for s in sigmas_px:
        k = 2 * int(4.0 * s + 0.5) + 1
        out.append(kornia.filters.gaussian_blur2d(x, (k, k), (s, s), "reflect"))
    out.append(x.mean(dim=(-2, -1), keepdim=True).expand_as(x))
    return out


def time_ours(
    images_u8: torch.Tensor, sigmas: list[float], bandwidth: float, repeats: int
) -> dict[str, dict[str, float]]:
    """Return images/s and fraction of the byte floor for uint8 and float32 batches."""
    rows = {}
    for name, images in (
        ("priorscope uint8", images_u8),
        ("priorscope float32", images_u8.float()),
    ):
        ms = device_ms(functools.partial(blur_ladder, images, sigmas), repeats, images.device.type)
        moved = images.numel() * images.element_size() * (1 + len(sigmas))  # read 1, write K
        floor_ms = moved / bandwidth * 1e3
        rows[name] = {
            "ms_per_batch": ms,
            "images_per_s": images.shape[0] / (ms / 1e3),
            "byte_floor_ms": floor_ms,
            "fraction_of_byte_floor": floor_ms / ms,
        }
    return rows


def print_rows(rows: dict[str, dict[str, float]]) -> None:
    """Print images/s, the multiple of kornia's throughput and the byte-floor fraction."""
    print(f"{'method':<22}{'images/s':>12}{'x kornia':>10}{'of byte floor':>15}")
    kornia_ips = rows["kornia float32"]["images_per_s"]
    for name, row in rows.items():
        floor = row.get("fraction_of_byte_floor")
        print(
            f"{name:<22}{row['images_per_s']:>12.1f}{row['images_per_s'] / kornia_ips:>10.1f}"
            f"{'' if floor is None else f'{floor:.1%}':>15}"
        )


def main() -> None:
    """Run the GPU benchmark and write its JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kornia-batch", type=int, default=16, help="kornia is timed on fewer")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cpu: a small smoke run of the script")
    args = parser.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit("blur_gpu.py needs a CUDA device (or --device cpu for a smoke run).")
    sigmas = [*DEFAULT_LADDER, math.inf]
    shape = (args.batch, 3, args.size, args.size)
    images_u8 = torch.randint(0, 256, shape, dtype=torch.uint8, device=args.device)
    bandwidth = copy_bandwidth(args.repeats, args.device)
    rows = time_ours(images_u8, sigmas, bandwidth, args.repeats)
    small = images_u8[: args.kornia_batch].float()
    sigmas_px = [s * args.size for s in DEFAULT_LADDER]
    ms = device_ms(lambda: kornia_ladder(small, sigmas_px), max(1, args.repeats // 2), args.device)
    rows["kornia float32"] = {"images_per_s": small.shape[0] / (ms / 1e3)}
    for row in rows.values():
        row["x_kornia"] = row["images_per_s"] / rows["kornia float32"]["images_per_s"]
    print_rows(rows)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu (smoke run)",
        "torch": torch.__version__,
        "batch": args.batch,
        "size": args.size,
        "ladder_relative": [*DEFAULT_LADDER, "inf"],
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "methods": rows,
    }
    out = args.out or Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    out = out / "blur_gpu.json" if out.suffix != ".json" else out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
