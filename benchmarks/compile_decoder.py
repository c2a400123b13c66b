"""Does ``torch.compile`` of the decoder pay for capture's prefill? (issue 15, a lever to measure)

A random-weight Qwen2.5-VL of ``--model`` size (benchmarks/capture.py), one capture batch
(``--examples`` synthetic items x the default ladder's 8 conditions, 112 px images), the
prefill forward capture runs (``logits_to_keep=1``, no cache, every hidden state returned).
Times the forward with the language model eager and compiled (``nn.Module.compile``, inductor,
static shapes), alternating after the compile's warm-up, and reports the medians, their ratio,
the compile's first call, and how far the compiled hidden states and logits are from eager
(compiled kernels fuse and reorder sums, so they are not bitwise equal).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compile_decoder.py --repeats 5
    python benchmarks/compile_decoder.py --model 3b --device cuda --dtype bf16 --examples 2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their pools

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from priorscope.engine.capture import CaptureConfig
from priorscope.engine.conditions import DEFAULT_LADDER
from priorscope.engine.data import synth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture import build_adapter, prepared_batches, sync  # benchmarks/capture.py

RESULTS = Path(__file__).resolve().parent / "results" / "compile_decoder.json"


def capture_batch(adapter: Any, examples: int, work: Path) -> dict[str, torch.Tensor]:
    """Return the encoded rows of one capture batch: every condition of ``examples`` items."""
    data = synth.write_tsv(
        synth.generate(synth.SynthConfig(n=examples, size=112, mc=True)), work / "d.tsv"
    )
    cfg = CaptureConfig(
        model="random", data=str(data), out=str(work / "unused.zarr"), ladder=DEFAULT_LADDER
    )
    items, images = prepared_batches(adapter, cfg)[0]
    rows = [(ex, img) for cond in images for ex, img in zip(items, images[cond], strict=True)]
    batch = adapter.encode([ex for ex, _ in rows], [img for _, img in rows])
    return {k: v.to(adapter.device) for k, v in batch.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="medium", help="a benchmarks/capture.py size")
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--out-json", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    adapter = build_adapter(args.model, args.device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        batch = capture_batch(adapter, args.examples, Path(tmp))
    device = torch.device(args.device)
    lm = adapter.language_model()

    def forward() -> tuple[float, Any]:
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = adapter.model(
                **batch, use_cache=False, logits_to_keep=1, output_hidden_states=True
            )
        sync(device)
        return time.perf_counter() - t0, out

    forward()  # warm-up, eager
    _, eager_out = forward()
    lm.compile(dynamic=False)
    compiled = lm._compiled_call_impl
    first_s, compiled_out = forward()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        lm._compiled_call_impl = None
        times["eager"].append(forward()[0])
        lm._compiled_call_impl = compiled
        times["compiled"].append(forward()[0])
    eager_s, comp_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    h_e, h_c = eager_out.hidden_states[-1].float(), compiled_out.hidden_states[-1].float()
    rel = float((h_e - h_c).abs().max() / h_e.abs().max())
    same_argmax = bool(
        torch.equal(eager_out.logits[:, -1].argmax(-1), compiled_out.logits[:, -1].argmax(-1))
    )
    rows = int(batch["input_ids"].shape[0])
    print(
        f"{'model':8s} {'rows':>5s} {'eager s':>9s} {'compiled s':>11s} {'speedup':>8s} "
        f"{'first call s':>13s} {'max rel diff':>13s} {'same answer token':>18s}"
    )
    print(
        f"{args.model:8s} {rows:5d} {eager_s:9.3f} {comp_s:11.3f} {eager_s / comp_s:7.2f}x "
        f"{first_s:13.1f} {rel:13.2e} {same_argmax!s:>18s}"
    )
    payload = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
        "model": args.model,
        "dtype": args.dtype,
        "rows": rows,
        "sequence": int(batch["input_ids"].shape[1]),
        "eager_s": times["eager"],
        "compiled_s": times["compiled"],
        "speedup": eager_s / comp_s,
        "first_compiled_call_s": first_s,
        "last_hidden_max_rel_diff": rel,
        "same_answer_token": same_argmax,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out_json}")


if __name__ == "__main__":
    main()
