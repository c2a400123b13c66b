"""GPU benchmark of the blur ladder: 256 RGB images 448x448, full default ladder, vs kornia.

Reports images per second on the same GPU, in one run, for priorscope's fused Triton kernel
(kernels/triton_blur.py, what ``blur_ladder`` picks on CUDA when triton is installed) and its
torch path (``FUSED_KERNEL = False``: cuFFT and elementwise launches), each with uint8 and
float32 in (same dtype out), and kornia (float32, one ``gaussian_blur2d`` per sigma) when it is
importable; without kornia the torch path is the peer. For each it gives the fraction of the
byte floor: the time to read every input once and write every output once at the device's
measured copy bandwidth, divided by the measured time. The fused kernel is also timed at a few
other block sizes and at ``ieee`` precision, and its largest difference from the torch path is
recorded. Writes JSON to $OUT/blur_gpu.json when OUT is set, else to
benchmarks/results/blur_gpu.json.

    python benchmarks/blur_gpu.py [--batch 256] [--size 448] [--repeats 5]
    python benchmarks/blur_gpu.py --device cpu --batch 2 --size 64 --out /tmp  # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch

import priorscope.kernels.blur as blur_module
from priorscope.engine.conditions import DEFAULT_LADDER
from priorscope.kernels import blur_ladder

# Fused-kernel variants timed besides the default: (BM, BN, BK) and tl.dot precision.
VARIANTS = [
    ((64, 64, 32), "tf32x3"),
    ((64, 256, 32), "tf32x3"),
    ((128, 128, 32), "tf32x3"),
    ((32, 128, 32), "tf32x3"),  # mma.sync instead of wgmma
    (None, "ieee"),
    (None, "bf16x3"),  # bf16 tensor cores: faster, ~1e-5 relative error
    (None, "bf16x6"),
]


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


@contextlib.contextmanager
def backend(
    fused: bool, blocks: tuple[int, int, int] | None = None, precision: str = ""
) -> Iterator:
    """Run blur_ladder on the fused kernel (with these blocks/precision) or the torch path."""
    saved = blur_module.FUSED_KERNEL
    blur_module.FUSED_KERNEL = fused
    kernel = None
    if fused:
        import priorscope.kernels.triton_blur as kernel

        saved_kernel = (kernel.DEFAULT_BLOCKS, kernel.DEFAULT_PRECISION)
        kernel.DEFAULT_BLOCKS = blocks or kernel.DEFAULT_BLOCKS
        kernel.DEFAULT_PRECISION = precision or kernel.DEFAULT_PRECISION
    try:
        yield
    finally:
        blur_module.FUSED_KERNEL = saved
        if kernel is not None:
            kernel.DEFAULT_BLOCKS, kernel.DEFAULT_PRECISION = saved_kernel


def time_one(images: torch.Tensor, sigmas: list[float], bandwidth: float, repeats: int) -> dict:
    """Return ms per batch, images/s and the fraction of the byte floor of one ladder call."""
    ms = device_ms(functools.partial(blur_ladder, images, sigmas), repeats, images.device.type)
    moved = images.numel() * images.element_size() * (1 + len(sigmas))  # read 1, write K
    floor_ms = moved / bandwidth * 1e3
    return {
        "ms_per_batch": ms,
        "images_per_s": images.shape[0] / (ms / 1e3),
        "byte_floor_ms": floor_ms,
        "fraction_of_byte_floor": floor_ms / ms,
    }


def fused_available(device: str) -> bool:
    """Return whether blur_ladder takes the fused kernel here (CUDA and triton installed)."""
    return device != "cpu" and importlib.util.find_spec("triton") is not None


def time_ours(
    images_u8: torch.Tensor, sigmas: list[float], bandwidth: float, repeats: int
) -> dict[str, dict[str, float]]:
    """Return a row per backend and dtype: the fused kernel (when available), the torch path."""
    rows = {}
    fused = fused_available(images_u8.device.type)
    for dtype, images in (("uint8", images_u8), ("float32", images_u8.float())):
        if fused:
            with backend(True):
                rows[f"fused {dtype}"] = time_one(images, sigmas, bandwidth, repeats)
                if not blur_module.FUSED_KERNEL:  # the build failed: blur.py warned, fell back
                    rows[f"fused {dtype}"]["fell_back_to_torch"] = True
                    print(f"fused {dtype}: kernel not built, the row times the torch path")
        with backend(False):
            rows[f"torch {dtype}"] = time_one(images, sigmas, bandwidth, repeats)
    return rows


def fused_checks(
    images_u8: torch.Tensor, sigmas: list[float], bandwidth: float, repeats: int
) -> dict[str, dict[str, float]]:
    """Return the fused kernel's difference from the torch path, then its variants' timings."""
    x = images_u8.float()
    with backend(False):
        torch_u8, torch_f32 = blur_ladder(images_u8, sigmas), blur_ladder(x, sigmas)
    with backend(True):
        u8_diff = (blur_ladder(images_u8, sigmas).int() - torch_u8.int()).abs().max().item()
        f32_diff = (blur_ladder(x, sigmas) - torch_f32).abs().max().item()
    rows = {"fused vs torch": {"max_abs_diff_uint8": u8_diff, "max_abs_diff_float32": f32_diff}}
    for blocks, precision in VARIANTS:
        name = f"fused float32 {blocks or 'default'} {precision}"
        try:
            with backend(True, blocks, precision):
                row = time_one(x, sigmas, bandwidth, repeats)
                diff = (blur_ladder(x, sigmas) - torch_f32).abs().max().item()
                row["max_abs_diff_float32"] = diff
        except Exception as exc:  # one variant this triton cannot build must not hide the rest
            print(f"{name}: failed: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        rows[name] = row
    return rows


def print_rows(rows: dict[str, dict[str, float]], peer: str) -> None:
    """Print images/s, the multiple of the peer's throughput and the byte-floor fraction."""
    head = f"{'method':<44}{'images/s':>12}{'x ' + peer:>22}{'of byte floor':>15}"
    print(head + f"{'max |diff| vs torch':>21}")
    peer_ips = rows[peer]["images_per_s"]
    for name, row in rows.items():
        if "images_per_s" not in row:
            continue
        floor = row.get("fraction_of_byte_floor")
        diff = row.get("max_abs_diff_float32")
        print(
            f"{name:<44}{row['images_per_s']:>12.1f}{row['images_per_s'] / peer_ips:>22.1f}"
            f"{'' if floor is None else f'{floor:.1%}':>15}"
            f"{'' if diff is None else f'{diff:.2g}':>21}"
        )


def _version(name: str) -> str | None:
    """Return an installed distribution's version, or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


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
    if importlib.util.find_spec("kornia") is not None:
        small = images_u8[: args.kornia_batch].float()
        sigmas_px = [s * args.size for s in DEFAULT_LADDER]
        repeats = max(1, args.repeats // 2)
        ms = device_ms(lambda: kornia_ladder(small, sigmas_px), repeats, args.device)
        rows["kornia float32"] = {"images_per_s": small.shape[0] / (ms / 1e3)}
        peer = "kornia float32"
    else:
        print("kornia is not importable: the peer is priorscope's torch path (float32).")
        peer = "torch float32"
    for row in rows.values():
        row[f"x_{peer.replace(' ', '_')}"] = row["images_per_s"] / rows[peer]["images_per_s"]
    if fused_available(args.device):
        rows.update(fused_checks(images_u8, sigmas, bandwidth, args.repeats))
    print_rows(rows, peer)
    if "fused vs torch" in rows:
        diff = rows["fused vs torch"]
        print(
            f"fused vs torch path: max |diff| uint8 {diff['max_abs_diff_uint8']:g} levels, "
            f"float32 {diff['max_abs_diff_float32']:.3g} (grey levels; bound 0.02 vs scipy)"
        )
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu (smoke run)",
        "torch": torch.__version__,
        "batch": args.batch,
        "size": args.size,
        "ladder_relative": [*DEFAULT_LADDER, "inf"],
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "peer": peer,
        "triton": _version("triton"),
        "methods": rows,
    }
    out = args.out or Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    out = out / "blur_gpu.json" if out.suffix != ".json" else out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
