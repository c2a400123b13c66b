"""Benchmark the decay sweep: a VLMEvalKit-style loop against ``priorscope capture`` (issue 15).

In one run, on the same synthetic items and the default ladder (clean, six blur levels, total):

* **loop**: what a user would otherwise write. Per item and per condition: blur the image with
  PIL's ``GaussianBlur`` at the same relative sigma (``sigma_px = rel * short side``; ``total``
  is the mean colour), ``adapter.encode`` it, ``adapter.generate`` (batch 1, greedy) and score.
  The model is loaded before the clock starts (in the loop's favour).
* **capture**: ``priorscope capture`` with hidden states kept (every layer, three reductions).
  On ``builtin:organism`` it runs as a subprocess, process start included. The medium model is a
  random-weight Qwen2.5-VL built in memory (``benchmarks/capture.py`` ``build_adapter``), which
  the CLI cannot load, so it runs in-process and the process start of the CLI (python, torch,
  transformers and priorscope imports, measured the same way) is added to its time.

Reports item-conditions per second of both, their ratio, and how often the loop's answers equal
the store's, per condition (blur conditions use different blur code on each side, so a few
answers near a decision boundary may differ; clean must agree).

``3b`` is the GPU version (benchmarks/gpu_check.sh): the random-weight Qwen2.5-VL-3B of
``benchmarks/capture.py`` built on ``--device`` in ``--dtype``, run in-process like ``medium``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep.py --items 400
    python benchmarks/sweep.py --models 3b --device cuda --dtype bf16 --items 16 --size 448 \
        --batch-size 16 --max-new-tokens 8 --start-repeats 1 --out-json $OUT/sweep_gpu.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their pools

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.conditions import DEFAULT_LADDER
from priorscope.engine.data import load, scoring, synth
from priorscope.engine.store import open_store

RESULTS = Path(__file__).resolve().parent / "results" / "sweep.json"
CLI = [sys.executable, "-P", "-m", "priorscope.cli.main"]


def loop_conditions(ladder: tuple[float, ...]) -> list[tuple[str, float | None]]:
    """Return (name, relative sigma) in store order; None is ``total``, 0.0 is clean."""
    return [("clean", 0.0), *((f"blur@{s:g}", s) for s in ladder), ("total", None)]


def loop_image(img: Image.Image, rel: float | None) -> Image.Image:
    """Return the condition image as a user would make it with PIL."""
    if rel is None:
        mean = np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return Image.new("RGB", img.size, tuple(round(float(v)) for v in mean))
    if rel == 0.0:
        return img
    return img.filter(ImageFilter.GaussianBlur(radius=rel * min(img.size)))


def run_loop(adapter: Any, examples: list[Any], ladder: tuple[float, ...], max_new: int) -> dict:
    """Return the loop's seconds and answers {(id, condition): answer}."""
    conds = loop_conditions(ladder)
    answers: dict[tuple[str, str], str] = {}
    t0 = time.perf_counter()
    for ex in examples:
        clean = ex.image
        for name, rel in conds:
            batch = adapter.encode([ex], [loop_image(clean, rel)])
            text = adapter.generate(batch, max_new_tokens=max_new)[0]
            answers[(ex.id, name)] = scoring.score(ex, text).answer or ""
    return {"seconds": time.perf_counter() - t0, "answers": answers}


def store_answers(path: str) -> dict[tuple[str, str], str]:
    store = open_store(path)
    ids, names = list(store.examples().ids), store.condition_names
    ans = store.outputs("answer")
    return {(i, c): str(ans[r, k]) for r, i in enumerate(ids) for k, c in enumerate(names)}


def agreement(loop: dict, stored: dict, conds: list[str]) -> dict[str, float]:
    out = {}
    for c in conds:
        keys = [k for k in loop if k[1] == c]
        out[c] = float(np.mean([loop[k] == stored.get(k) for k in keys])) if keys else float("nan")
    return out


def cli_start_seconds(repeats: int = 3) -> float:
    """Return the median wall time of a process that imports what ``priorscope capture`` does."""
    code = "import torch, transformers, priorscope.cli.main, priorscope.engine.capture"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-P", "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def capture_cfg(
    model: str, data: Path, out: Path, args: argparse.Namespace, answer_from: str = "generate"
) -> CaptureConfig:
    return CaptureConfig(
        model=model,
        data=str(data),
        out=str(out),
        ladder=DEFAULT_LADDER,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        progress=False,
        answer_from=answer_from,
    )


def run_capture_cli(cfg: CaptureConfig) -> float:
    """Return the wall seconds of ``priorscope capture`` as a subprocess."""
    cmd = [*CLI, "capture", "--model", cfg.model, "--data", cfg.data, "--out", cfg.out]
    cmd += ["--device", "cpu", "--dtype", "fp32", "--batch-size", str(cfg.batch_size)]
    cmd += ["--max-new-tokens", str(cfg.max_new_tokens), "--no-progress"]
    cmd += ["--answer-from", cfg.answer_from]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


def bench_model(name: str, args: argparse.Namespace, data: Path, work: Path) -> dict:
    from priorscope.engine.models.registry import load_model

    examples = list(load(str(data)).examples)
    if name == "organism":
        adapter = load_model("builtin:organism", dtype="float32")
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from capture import build_adapter  # benchmarks/capture.py

        torch_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[args.dtype]
        adapter = build_adapter(name, args.device, torch_dtype)
    loop = run_loop(adapter, examples, DEFAULT_LADDER, args.max_new_tokens)
    start_s = 0.0 if name == "organism" else cli_start_seconds(args.start_repeats)

    def timed(answer_from: str) -> tuple[float, Path]:
        out = work / f"{name}-{answer_from}.zarr"
        model = "builtin:organism" if name == "organism" else f"random:{name}"
        cfg = capture_cfg(model, data, out, args, answer_from)
        if name == "organism":
            return run_capture_cli(cfg), out
        t0 = time.perf_counter()
        capture(cfg, adapter=adapter)
        return time.perf_counter() - t0 + start_s, out

    cap_s, out = timed("generate")
    n_ic = len(examples) * (len(DEFAULT_LADDER) + 2)
    conds = [c for c, _ in loop_conditions(DEFAULT_LADDER)]
    extra: dict[str, Any] = {}
    if args.candidates:  # the same capture answering from the prefill's candidate log-probs
        cand_s, cand_out = timed("candidates")
        extra = {
            "candidates_capture_s": cand_s,
            "candidates_capture_ic_per_s": n_ic / cand_s,
            "candidates_ratio": loop["seconds"] / cand_s,
            "candidates_answers_equal": agreement(
                loop["answers"], store_answers(str(cand_out)), conds
            ),
        }
    return {
        "model": name,
        "items": len(examples),
        "item_conditions": n_ic,
        "loop_s": loop["seconds"],
        "capture_s": cap_s,
        "capture_process_start_added_s": start_s,
        "loop_ic_per_s": n_ic / loop["seconds"],
        "capture_ic_per_s": n_ic / cap_s,
        "ratio": loop["seconds"] / cap_s,
        "answers_equal": agreement(loop["answers"], store_answers(str(out)), conds),
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--size", type=int, default=112, help="Image side in pixels.")
    parser.add_argument("--models", default="organism,medium")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cuda: the GPU version (3b)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--start-repeats", type=int, default=3, help="CLI start timings")
    parser.add_argument("--out-json", type=Path, default=RESULTS)
    parser.add_argument(
        "--candidates",
        action="store_true",
        help="Also time capture --answer-from candidates (answers read at the prefill).",
    )
    parser.add_argument(
        "--open", action="store_true", help="Open questions (synth without --mc) instead."
    )
    args = parser.parse_args()
    if args.device != "cpu" and "organism" in args.models.split(","):
        raise SystemExit("The organism runs as a CPU subprocess: use --models medium,3b here.")
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = synth.SynthConfig(n=args.items, size=args.size, mc=not args.open)
        data = synth.write_tsv(synth.generate(cfg), work / "bench.tsv")
        for name in args.models.split(","):
            rows.append(bench_model(name, args, data, work))
            r = rows[-1]
            print(
                f"{r['model']:9s} items={r['items']} loop {r['loop_ic_per_s']:8.1f} ic/s  "
                f"capture {r['capture_ic_per_s']:8.1f} ic/s  ratio {r['ratio']:5.2f}x  "
                f"answers equal {json.dumps({k: round(v, 3) for k, v in r['answers_equal'].items()})}",
                flush=True,
            )
            if args.candidates:
                same = {k: round(v, 3) for k, v in r["candidates_answers_equal"].items()}
                print(
                    f"{'':9s} --answer-from candidates: capture "
                    f"{r['candidates_capture_ic_per_s']:8.1f} ic/s  ratio "
                    f"{r['candidates_ratio']:5.2f}x  answers equal {json.dumps(same)}",
                    flush=True,
                )
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype,
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    args.out_json.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out_json}")


if __name__ == "__main__":
    main()
