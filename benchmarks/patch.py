"""Benchmark layer replacement: suffix replay from the cache vs one hooked full forward per patch.

In one run, on the same examples (the built-in organism on synthetic data):

* **capture**: ``capture`` with full sequences at every layer (the cost every method shares);
* **grad**: the ``--grad`` pass (one forward and backward per condition and batch, re-encoding the
  images: an upper bound of the wired-in cost, which reuses capture's encoded batches);
* **replay**: ``patch(store, PatchConfig(...))`` for all layers x (image, text, last) x (state,
  write), one direction (noising: total into clean);
* **hooked**: the TransformerLens/nnsight way: for every patch one full forward, vision tower
  included, with a write hook (``sites.Write``) splicing the cached value; inputs are encoded once
  per example (not timed), so only the forwards count;
* **estimate**: ``patch(..., method='estimate')`` from the gradients, no model.

Both exact methods must agree (row-wise relative error of the candidate log-probs); the
estimate's agreement with them is reported (Pearson, Spearman, sign, top-k overlap). Peak memory
growth of each timed section: host RSS sampled every 2 ms on CPU, the CUDA allocator's peak on a
GPU. Medians over ``--repeats``.

    OMP_NUM_THREADS=1 python benchmarks/patch.py                    # CPU, 24 examples
    python benchmarks/patch.py --device cuda --examples 64 --out-json benchmarks/results/patch_gpu.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their pools

import argparse
import dataclasses
import json
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.capture.gradients import example_gradients
from priorscope.engine.capture.images import condition_images
from priorscope.engine.data import synth
from priorscope.engine.models import load_model
from priorscope.engine.models.sites import Write, hooks, site_name
from priorscope.engine.patch import PatchConfig, patch
from priorscope.engine.patch.estimate import MemoryGradients
from priorscope.engine.patch.lens import rowwise_error
from priorscope.engine.patch.replay import Patch, patched_state
from priorscope.engine.patch.run import _last_states, replay_input
from priorscope.engine.store import open_store

RESULTS = Path(__file__).resolve().parent / "results" / "patch.json"


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Yield a dict that holds, on exit, the peak RSS growth (MiB) over the block."""
    proc, out = psutil.Process(), {"mib": 0.0}
    start = proc.memory_info().rss
    peak, stop = [start], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["mib"] = (max(peak[0], proc.memory_info().rss) - start) / 2**20


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Return (median seconds, max peak memory growth MiB, last result) of ``repeats`` calls.

    Memory is host RSS growth on CPU and the CUDA allocator's peak on a GPU.
    """
    times, mems, result = [], [], None
    cuda = torch.cuda.is_available()
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with peak_rss() as mem:
            t0 = time.perf_counter()
            result = fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        mems.append((torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else mem["mib"])
    return statistics.median(times), max(mems), result


def make_data(folder: Path, n: int) -> tuple[Path, list[Any]]:
    rows = synth.generate(synth.SynthConfig(n=n, seed=7, size=84))
    rows = [dataclasses.replace(ex, id=f"b{i}") for i, ex in enumerate(rows)]
    return synth.write_tsv(rows, folder / "bench.tsv"), rows


def capture_cfg(data: Path, out: Path, n: int, device: str) -> CaptureConfig:
    return CaptureConfig(
        model="builtin:organism",
        data=str(data),
        out=str(out),
        ladder=(0.04,),
        total=True,
        full_seq=n,
        full_seq_layers="all",
        batch_size=8,
        device=device,
        dtype="float32",
        hidden_dtype="float32",
        max_new_tokens=2,
        progress=False,
    )


def hooked_run(adapter: Any, store: Any, examples: list[Any], cfg: PatchConfig) -> np.ndarray:
    """Return log-probs [example, layer, group, mode, candidate] from one hooked forward each."""
    cand = adapter.candidate_token_ids(store.candidates)
    rows = store.fullseq_examples()
    last = _last_states(store, {cfg.source, cfg.target}, tuple(store.layers))
    layers = store.fullseq(rows[0]).layers
    source_rows = store.examples().source_row
    out = np.full((len(rows), len(layers), len(cfg.groups), len(cfg.modes), len(cand)), np.nan)
    got: dict[str, torch.Tensor] = {}
    reads = {"logits": lambda t: got.__setitem__("l", t[:, -1].float())}
    for ei, row in enumerate(rows):
        inp = replay_input(store, row, str(row), last)
        ex = examples[int(source_rows[row])]
        images = condition_images([ex], store.conditions, adapter.device)
        batch = adapter.encode([ex], [images[cfg.target][0]])
        for li, layer in enumerate(layers):
            for gi, group in enumerate(cfg.position_groups):
                mask = group.mask(inp.kind)
                for mi, mode in enumerate(cfg.modes):
                    p = Patch(row, layer, group, mode, cfg.source, cfg.target)
                    value = torch.from_numpy(patched_state(inp, p, mask))[None]
                    write = Write(site_name(layer), value, positions=torch.from_numpy(mask)[None])
                    with hooks(adapter, reads=reads, writes=[write]), torch.no_grad():
                        adapter.model(**batch)
                    lp = torch.log_softmax(got["l"], dim=-1)[0, cand]
                    out[ei, li, gi, mi] = lp.cpu().numpy()
    return out


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    n, device = args.examples, args.device
    data, examples = make_data(work, n)
    adapter = load_model("builtin:organism", device=device, dtype="float32")
    counter = iter(range(10**6))

    def fresh_capture() -> Path:
        out = work / f"s{next(counter)}.zarr"
        return capture(capture_cfg(data, out, n, device), adapter=adapter)

    cap_s, cap_mib, path = timed(fresh_capture, args.repeats)
    store = open_store(path)
    ordered = [examples[i] for i in store.examples().source_row]
    prior = [str(a) for a in store.outputs("answer")[:, store.condition_index("total")]]
    fs = store.fullseq(store.fullseq_examples()[0])

    def grads() -> MemoryGradients:
        last, full = example_gradients(
            adapter,
            ordered,
            store.conditions,
            store.candidates,
            prior,
            store.layers,
            fs.layers,
            store.fullseq_examples(),
            fs.conditions,
            batch_size=8,
        )
        return MemoryGradients(tuple(store.layers), last, full)

    grad_s, grad_mib, gradients = timed(grads, args.repeats)
    cfg = PatchConfig(both_directions=False, batch_size=args.batch_size)
    replay_s, replay_mib, result = timed(lambda: patch(store, cfg, adapter=adapter), args.repeats)
    hooked_s, hooked_mib, hooked = timed(
        lambda: hooked_run(adapter, store, examples, cfg), args.repeats
    )
    est_cfg = dataclasses.replace(cfg, method="estimate")
    est_s, est_mib, _ = timed(lambda: patch(store, est_cfg, gradients=gradients), args.repeats)
    both = patch(
        store, dataclasses.replace(cfg, method="both"), adapter=adapter, gradients=gradients
    )
    replay_lp = result.exact["logprob"][0]
    err = rowwise_error(replay_lp, hooked)
    n_patches = int(np.isfinite(replay_lp).all(axis=-1).sum())
    flips_equal = float((replay_lp.argmax(-1) == hooked.argmax(-1)).mean())
    agreement = {k: a.to_json() for k, a in both.agreement.items()}
    return {
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or "unknown",
            "threads": args.threads,
            "device": device,
            "torch": torch.__version__,
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": args.command,
        "examples": n,
        "layers": len(result.layers),
        "patches": n_patches,
        "seconds": {
            "capture": cap_s,
            "grad": grad_s,
            "replay": replay_s,
            "hooked_full_forward": hooked_s,
            "estimate": est_s,
        },
        "peak_rss_growth_mib": {
            "capture": cap_mib,
            "grad": grad_mib,
            "replay": replay_mib,
            "hooked_full_forward": hooked_mib,
            "estimate": est_mib,
        },
        "speedup_replay_vs_hooked": hooked_s / replay_s,
        "grad_capture_ratio": (cap_s + grad_s) / cap_s,
        "max_rowwise_error_replay_vs_hooked": float(np.nanmax(err)),
        "same_top_candidate": flips_equal,
        "estimate_vs_exact": agreement,
    }


def print_table(r: dict[str, Any]) -> None:
    s, m = r["seconds"], r["peak_rss_growth_mib"]
    print(
        f"\n{r['examples']} examples x {r['layers']} layers x 3 groups x 2 modes = "
        f"{r['patches']} patches, {r['machine']['threads']} thread(s), {r['machine']['device']}"
    )
    print(f"{'section':<34}{'median s':>10}{'peak mem +MiB':>15}")
    for key, label in (
        ("capture", "capture (full seq, all layers)"),
        ("grad", "--grad pass"),
        ("replay", "patch: suffix replay"),
        ("hooked_full_forward", "hooked full forward per patch"),
        ("estimate", "patch --estimate (no model)"),
    ):
        print(f"{label:<34}{s[key]:>10.3f}{m[key]:>15.1f}")
    print(
        f"replay speed-up over hooked forwards: {r['speedup_replay_vs_hooked']:.1f}x (goal >= 5x)"
    )
    print(f"capture with --grad / without: {r['grad_capture_ratio']:.2f}x (goal <= 2x)")
    print(
        f"replay vs hooked: max row-wise relative error {r['max_rowwise_error_replay_vs_hooked']:.1e}, "
        f"same top candidate {100 * r['same_top_candidate']:.1f}%"
    )
    for k, a in r["estimate_vs_exact"].items():
        print(
            f"estimate vs exact {k:<14} cells {a['n_cells']:>5}  Pearson {a['pearson']:.3f}  "
            f"Spearman {a['spearman']:.3f}  sign {a['sign_agreement']:.3f}  "
            f"top-{a['top_k']} {a['top_k_overlap']:.2f}"
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-json", default=str(RESULTS))
    return p.parse_args()


def main() -> None:
    args = parse_args()
    args.command = "python benchmarks/patch.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "command"
    )
    work = Path(tempfile.mkdtemp(prefix="priorscope_patch_bench_"))
    try:
        results = benchmark(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
