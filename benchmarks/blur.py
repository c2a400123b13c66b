"""Benchmark the full blur ladder against PIL, OpenCV, scipy and kornia on one CPU thread.

For each size (448x448 and 1024x768 RGB) it times the default ladder (six relative sigmas plus
total obfuscation) per image for every method on the same random images, and measures each
method's max error against scipy's float64 ``gaussian_filter(mode="reflect", truncate=4.0)``.
Prints a table (ms per image per ladder, median; speed-up of priorscope float32 over each
peer; max error in grey levels) and writes benchmarks/results/blur.json.

    OMP_NUM_THREADS=1 python benchmarks/blur.py            # full run (a few minutes)
    OMP_NUM_THREADS=1 python benchmarks/blur.py --quick    # one repeat, 448x448 only
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch/cv2 start their pools

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import cv2
import kornia.filters
import numpy as np
import scipy.ndimage as ndi
import torch
from PIL import Image, ImageFilter

from priorscope.engine.conditions import DEFAULT_LADDER
from priorscope.kernels import blur_ladder

RESULTS = Path(__file__).resolve().parent / "results" / "blur.json"
SIZES = {"448x448": (448, 448), "1024x768": (768, 1024)}  # name -> (height, width)
SLOW = {"scipy float32", "kornia float32"}  # timed with one repeat: seconds per ladder

Ladder = Callable[[np.ndarray], list[np.ndarray]]  # HWC image -> one HWC float array per level


def ksize(sigma: float) -> int:
    """Return the odd kernel size matching scipy's truncate=4 radius, 2 * round(4 sigma) + 1."""
    return 2 * int(4.0 * sigma + 0.5) + 1


def with_total(levels: list[np.ndarray], image: np.ndarray) -> list[np.ndarray]:
    """Return ``levels`` plus the total-obfuscation level (every pixel its channel's mean)."""
    mean = image.astype(np.float64).mean(axis=(0, 1), keepdims=True)
    return [*levels, np.broadcast_to(mean, image.shape)]


def make_methods(sigmas: list[float]) -> dict[str, Ladder]:
    """Return the ladder functions to compare, each for pixel ``sigmas`` plus total."""
    full = [*sigmas, math.inf]

    def ours(image: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        out = blur_ladder(x, full, relative=False)[0]
        return [level.permute(1, 2, 0).numpy() for level in out]

    def opencv(image: np.ndarray) -> list[np.ndarray]:
        blurred = [
            cv2.GaussianBlur(image, (ksize(s), ksize(s)), s, borderType=cv2.BORDER_REFLECT)
            for s in sigmas
        ]
        return with_total(blurred, image)

    def pil(image: np.ndarray) -> list[np.ndarray]:
        picture = Image.fromarray(image)
        blurred = [np.asarray(picture.filter(ImageFilter.GaussianBlur(s))) for s in sigmas]
        return with_total(blurred, image)

    def scipy_f32(image: np.ndarray) -> list[np.ndarray]:
        blurred = [
            ndi.gaussian_filter(image, (s, s, 0), mode="reflect", truncate=4.0) for s in sigmas
        ]
        return with_total(blurred, image)

    def kornia_f32(image: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        # kornia's "reflect" is torch's (edge not repeated); it has no scipy-style mirror.
        blurred = [
            kornia.filters.gaussian_blur2d(x, (ksize(s), ksize(s)), (s, s), "reflect")[0]
            .permute(1, 2, 0)
            .numpy()
            for s in sigmas
        ]
        return with_total(blurred, image)

    return {
        "priorscope float32": ours,
        "priorscope uint8": ours,
        "opencv float32": opencv,
        "opencv uint8": opencv,
        "PIL uint8": pil,
        "scipy float32": scipy_f32,
        "kornia float32": kornia_f32,
    }


def input_for(method: str, image: np.ndarray) -> np.ndarray:
    """Return the image in the dtype the method is timed on (uint8 or float32)."""
    return image if "uint8" in method else image.astype(np.float32)


def time_methods(
    methods: dict[str, Ladder], images: list[np.ndarray], repeats: int
) -> dict[str, list[float]]:
    """Return per-image ladder times (ms) per method, methods interleaved within each repeat.

    Interleaving spreads any load from other processes evenly over the methods compared. Each
    method's first call (cold caches: priorscope builds its transfer functions) is kept apart
    under "<name> first call"; the SLOW peers are then timed once, on the first image.
    """
    inputs = {name: [input_for(name, image) for image in images] for name in methods}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for name, fn in methods.items():
        start = time.perf_counter()
        fn(inputs[name][0])
        times[f"{name} first call"] = [(time.perf_counter() - start) * 1e3]
    for rep in range(repeats):
        for name, fn in methods.items():
            if name in SLOW and rep > 0:
                continue
            for image in inputs[name][:1] if name in SLOW else inputs[name]:
                start = time.perf_counter()
                fn(image)
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def max_error(fn: Ladder, image: np.ndarray, reference: list[np.ndarray]) -> float:
    """Return the largest absolute difference (grey levels) to the float64 reference."""
    levels = fn(image)
    return max(
        float(np.abs(a.astype(np.float64) - r).max())
        for a, r in zip(levels, reference, strict=False)
    )


def bench_size(name: str, images: list[np.ndarray], repeats: int) -> dict[str, object]:
    """Return timings and errors of every method for one image size."""
    h, w = images[0].shape[:2]
    sigmas = [s * min(h, w) for s in DEFAULT_LADDER]
    methods = make_methods(sigmas)
    reference = with_total(
        [
            ndi.gaussian_filter(images[0].astype(np.float64), (s, s, 0), truncate=4.0)
            for s in sigmas
        ],
        images[0],
    )
    times = time_methods(methods, images, repeats)
    rows: dict[str, dict[str, float]] = {}
    for method, fn in methods.items():
        rows[method] = {
            "ms_per_image_ladder": statistics.median(times[method]),
            "max_error_grey_levels": max_error(fn, input_for(method, images[0]), reference),
            "timed_calls": len(times[method]),
            "first_call_ms": times[f"{method} first call"][0],
        }
    ours = rows["priorscope float32"]["ms_per_image_ladder"]
    for row in rows.values():
        row["priorscope_float32_speedup"] = row["ms_per_image_ladder"] / ours
    return {"height": h, "width": w, "sigmas_px": sigmas, "methods": rows}


def print_table(results: dict[str, dict[str, object]]) -> None:
    """Print one table per size: ms/image/ladder, speed-up of ours over it, max error."""
    for name, result in results.items():
        print(f"\n{name}  (ms per image per full ladder, median; one thread)")
        print(f"{'method':<22}{'ms':>10}{'ours f32 is x faster':>22}{'max err (levels)':>18}")
        for method, row in result["methods"].items():  # type: ignore[attr-defined]
            print(
                f"{method:<22}{row['ms_per_image_ladder']:>10.1f}"
                f"{row['priorscope_float32_speedup']:>22.2f}{row['max_error_grey_levels']:>18.4f}"
            )


def main() -> None:
    """Run the benchmark and write benchmarks/results/blur.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, 448x448 only")
    parser.add_argument("--images", type=int, default=3, help="distinct images per size")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the images")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    sizes = {"448x448": SIZES["448x448"]} if args.quick else SIZES
    repeats = 1 if args.quick else args.repeats
    rng = np.random.default_rng()
    load_before = os.getloadavg()
    results = {}
    for name, (h, w) in sizes.items():
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.images)]
        results[name] = bench_size(name, images, repeats)
    print_table(results)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores",
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "threads": 1,
        # Other processes share the machine: timings are only comparable within one run.
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": os.getloadavg(),
        "ladder_relative": [*DEFAULT_LADDER, "inf"],
        "quick": args.quick,
        "sizes": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
