"""A/B of the Qwen-VL index memo (engine/models/qwen_layout) inside one capture process.

Loads the model once and runs ``capture`` on the same synthetic items alternately with the
adapter's ``forward_context`` (vision indices once per grid, M-RoPE rows once per distinct row)
and with transformers' own loops (a null context), ``--repeats`` times each, timing process CPU
seconds (the writer and preparation threads included). Prints the medians and their ratio, and
checks that the two stores are bitwise equal, every array.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/layout_memo.py --items 96 --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/layout_memo.py --model medium --items 16
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their pools

import argparse
import contextlib
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.conditions import DEFAULT_LADDER
from priorscope.engine.data import synth
from priorscope.engine.models.qwen2_vl import Qwen2VLAdapter
from priorscope.engine.models.registry import load_model

RESULTS = Path(__file__).resolve().parent / "results" / "layout_memo.json"


def arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, member in group.members():
        if isinstance(member, zarr.Group):
            yield from arrays(member, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", member


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Return whether two arrays hold the same values bit for bit (-0.0 and nan payloads too)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return a.tobytes() == b.tobytes()
    return bool(np.array_equal(a, b))


def differing(a: Path, b: Path) -> list[str]:
    """Return the arrays whose contents differ between two stores."""
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    return [name for name, arr in arrays(ga) if not same_bits(arr[...], gb[name][...])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="organism", help="organism, or a benchmarks/capture.py size")
    p.add_argument("--items", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--answer-from", default="generate,candidates")
    p.add_argument("--out-json", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.model == "organism":
        adapter, name = load_model("builtin:organism", dtype="float32"), "builtin:organism"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from capture import build_adapter  # benchmarks/capture.py

        adapter, name = build_adapter(args.model, "cpu", "float32"), f"random:{args.model}"
    memo = Qwen2VLAdapter.forward_context
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = synth.write_tsv(
            synth.generate(synth.SynthConfig(n=args.items, size=112, mc=True)), work / "d.tsv"
        )

        def run(side: str, answer_from: str) -> float:
            out = work / f"{side}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            cfg = CaptureConfig(
                model=name,
                data=str(data),
                out=str(out),
                ladder=DEFAULT_LADDER,
                batch_size=args.batch_size,
                max_new_tokens=16,
                progress=False,
                answer_from=answer_from,
            )
            off = lambda self: contextlib.nullcontext()  # noqa: E731
            Qwen2VLAdapter.forward_context = memo if side == "memo" else off  # type: ignore[method-assign]
            try:
                t0 = time.process_time()
                capture(cfg, adapter=adapter)
                return time.process_time() - t0
            finally:
                Qwen2VLAdapter.forward_context = memo  # type: ignore[method-assign]

        for answer_from in args.answer_from.split(","):
            times: dict[str, list[float]] = {"stock": [], "memo": []}
            for _ in range(args.repeats):
                for side in ("stock", "memo"):
                    times[side].append(run(side, answer_from))
            stock, fast = float(np.median(times["stock"])), float(np.median(times["memo"]))
            rows.append(
                {
                    "answer_from": answer_from,
                    "stock_cpu_s": times["stock"],
                    "memo_cpu_s": times["memo"],
                    "speedup": stock / fast,
                    "arrays_differing": differing(work / "stock.zarr", work / "memo.zarr"),
                }
            )
            r = rows[-1]
            print(
                f"{args.model:9s} {answer_from:10s} stock {stock:7.2f} s  memo {fast:7.2f} s  "
                f"speedup {r['speedup']:.3f}x  arrays differing: {r['arrays_differing'] or 'none'}",
                flush=True,
            )
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
        "model": args.model,
        "items": args.items,
        "rows": rows,
    }
    args.out_json.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out_json}")


if __name__ == "__main__":
    main()
