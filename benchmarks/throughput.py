"""Benchmark capture throughput with 1..K torchrun ranks writing one store, and sweep layouts.

Section 1 (ranks): for each K, ``torchrun --standalone --nproc_per_node K`` runs this script's
worker on every rank; each rank loads the model (not timed), counts the prefill tokens of the
examples it owns (not timed), then times ``priorscope.engine.capture`` of its shards into the
one shared store. Per rank: examples/s, tokens/s and CPU seconds; aggregate: all examples over
the window from the first rank's start to the last rank's end; scaling efficiency =
aggregate(K) / (K x aggregate(1)); store bytes/s = bytes on disk / window. Runs of different K
are interleaved within each repeat so that load on a shared machine falls on all of them.

Section 2 (modes, ``--modes``): a sweep of 2 models x 2 benchmarks under K ranks, once with
``parallel = "shards"`` (every rank takes part in every store) and once with ``"jobs"`` (whole
stores per rank), for a small and a large benchmark size: which layout gives more throughput.

    OMP_NUM_THREADS=1 python benchmarks/throughput.py                        # CPU, 1 and 2 ranks
    OMP_NUM_THREADS=1 python benchmarks/throughput.py --modes                # + sweep layouts
    python benchmarks/throughput.py --device cuda --ranks 1,$(nvidia-smi -L | wc -l) \\
        --model random:3b --examples 256 --image-size 448 --batch-size 16 --shard-examples 64 \\
        --out-json benchmarks/results/throughput_gpu.json                  # GPU check
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their pools

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "throughput.json"
LADDER = (0.02, 0.08)


# --------------------------------------------------------------------------------------------
# The worker (one per rank, started by torchrun)


def load_adapter(model: str, device: str, dtype: str) -> Any:
    """Return the adapter of ``model``: a path, builtin:NAME, or random:SIZE (benchmarks/capture)."""
    if model.startswith("random:"):
        sys.path.insert(0, str(HERE))
        from capture import build_adapter  # benchmarks/capture.py: a random Qwen2.5-VL

        return build_adapter(model.split(":", 1)[1], device, dtype)
    from priorscope.engine.models.registry import load_model

    return load_model(model, device=device, dtype=dtype)


def owned_tokens(adapter: Any, cfg: Any, rank: int, world: int) -> tuple[int, int]:
    """Return (examples, prefill tokens over every condition) of the shards this rank owns."""
    from priorscope.engine.capture.plan import make_plan
    from priorscope.engine.data import load
    from priorscope.engine.store.layout import rank_shards

    examples = list(load(cfg.data).examples)
    plan = make_plan(examples, 0)
    n, step = len(examples), cfg.shard_examples
    shards = rank_shards(-(-n // step), rank, world)
    kinds = [c.kind for c in cfg.conditions()]
    count = tokens = 0
    for shard in shards:
        for idx in range(shard * step, min((shard + 1) * step, n)):
            ex = plan.example_at(idx)
            image = ex.image if ex.image_bytes is not None else None
            # Blur keeps the image size, so every image condition has the clean token count.
            tokens += int(adapter.encode([ex], [image])["attention_mask"].sum()) * (
                len(kinds) - kinds.count("none")
            )
            if "none" in kinds:
                tokens += int(adapter.encode([ex], [None])["attention_mask"].sum())
            count += 1
    return count, tokens


def worker(args: argparse.Namespace) -> None:
    """Capture this rank's shards into ``args.store``; write this rank's timings as JSON."""
    import torch

    from priorscope.engine.capture import CaptureConfig, capture, parse_shard
    from priorscope.engine.sweep.run import rank_device

    if args.device == "cpu":
        torch.set_num_threads(1)  # one thread per rank: ranks are what scales here
    rank, world = parse_shard(None)
    device = rank_device(args.device)
    dtype = "float32" if device == "cpu" else "bfloat16"
    t_load = time.perf_counter()
    adapter = load_adapter(args.model, device, dtype)
    load_s = time.perf_counter() - t_load
    cfg = CaptureConfig(
        model=args.model,
        data=args.data,
        out=args.store,
        ladder=LADDER,
        batch_size=args.batch_size,
        device=device,
        max_new_tokens=args.max_new_tokens,
        shard=(rank, world),
        shard_examples=args.shard_examples,
        progress=False,
    )
    examples, tokens = owned_tokens(adapter, cfg, rank, world)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    cpu0, t0 = time.process_time(), time.time()
    capture(cfg, adapter=adapter)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t1, cpu1 = time.time(), time.process_time()
    doc = {
        "rank": rank,
        "world": world,
        "device": device,
        "examples": examples,
        "tokens": tokens,
        "start": t0,
        "end": t1,
        "cpu_s": cpu1 - cpu0,
        "load_s": load_s,
    }
    Path(args.timings, f"rank{rank}.json").write_text(json.dumps(doc))


# --------------------------------------------------------------------------------------------
# The parent


def torchrun(nproc: int, argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``torchrun --standalone --nproc_per_node nproc ARGV``; raise with its log on failure."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one_run(args: argparse.Namespace, k: int, work: Path) -> dict[str, Any]:
    """Return the per-rank and aggregate figures of one capture with ``k`` ranks."""
    store, timings = work / f"k{k}.zarr", work / f"timings{k}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(timings, ignore_errors=True)
    timings.mkdir()
    argv = [__file__, "--worker", "--store", str(store), "--timings", str(timings)]
    argv += ["--model", args.model, "--data", str(args.data), "--device", args.device]
    argv += ["--batch-size", str(args.batch_size), "--shard-examples", str(args.shard_examples)]
    argv += ["--max-new-tokens", str(args.max_new_tokens)]
    torchrun(k, argv)
    ranks = [json.loads(p.read_text()) for p in sorted(timings.glob("rank*.json"))]
    window = max(r["end"] for r in ranks) - min(r["start"] for r in ranks)
    examples, tokens = sum(r["examples"] for r in ranks), sum(r["tokens"] for r in ranks)
    for r in ranks:
        seconds = r["end"] - r["start"]
        r["examples_per_s"] = r["examples"] / seconds
        r["tokens_per_s"] = r["tokens"] / seconds
    return {
        "ranks": k,
        "window_s": window,
        "examples": examples,
        "examples_per_s": examples / window,
        "tokens_per_s": tokens / window,
        "store_bytes": disk_bytes(store),
        "store_mb_per_s": disk_bytes(store) / window / 1e6,
        "per_rank": ranks,
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the median of every aggregate figure over repeats, and the run nearest to it."""
    keys = ("window_s", "examples_per_s", "tokens_per_s", "store_mb_per_s")
    out = {key: statistics.median(r[key] for r in runs) for key in keys}
    nearest = min(runs, key=lambda r: abs(r["examples_per_s"] - out["examples_per_s"]))
    per_rank = [
        {
            "rank": i,
            "examples_per_s": statistics.median(r["per_rank"][i]["examples_per_s"] for r in runs),
            "tokens_per_s": statistics.median(r["per_rank"][i]["tokens_per_s"] for r in runs),
            "cpu_s": statistics.median(r["per_rank"][i]["cpu_s"] for r in runs),
        }
        for i in range(len(nearest["per_rank"]))
    ]
    return {"ranks": runs[0]["ranks"], **out, "per_rank": per_rank, "repeats": runs}


def ranks_section(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    ks = [int(k) for k in args.ranks.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in ks}
    for rep in range(args.repeats):
        for k in ks if rep % 2 == 0 else ks[::-1]:
            runs[k].append(one_run(args, k, work))
            print(f"  repeat {rep + 1}, {k} rank(s): {runs[k][-1]['examples_per_s']:.2f} ex/s")
    rows = [median_run(runs[k]) for k in ks]
    base = rows[0]["examples_per_s"] / rows[0]["ranks"]
    for row in rows:
        row["scaling_efficiency"] = row["examples_per_s"] / (row["ranks"] * base)
    return rows


SWEEP = """root = "{root}"
parallel = "{mode}"
[[models]]
name = "m1"
path = "{model}"
[[models]]
name = "m2"
path = "{model}"
[[benchmarks]]
name = "b1"
file = "{data1}"
[[benchmarks]]
name = "b2"
file = "{data2}"
[conditions]
ladder = [0.02, 0.08]
[capture]
batch_size = {batch}
shard_examples = {shard}
max_new_tokens = {tokens}
device = "{device}"
[analyses]
decay = false
report = false
"""


def modes_section(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Return wall seconds and examples/s of a 2x2 sweep per (benchmark size, layout)."""
    from priorscope.engine.data import synth

    k = max(int(x) for x in args.ranks.split(","))
    rows = []
    for n in (args.small, args.examples):
        files = [
            synth.write_tsv(
                synth.generate(synth.SynthConfig(n=n, seed=s, size=args.image_size, mc=True)),
                work / f"sweep{n}_{s}.tsv",
            )
            for s in (1, 2)
        ]
        times: dict[str, list[float]] = {"shards": [], "jobs": []}
        for rep in range(args.repeats):
            for mode in ("shards", "jobs") if rep % 2 == 0 else ("jobs", "shards"):
                root = work / f"sweep_{n}_{mode}"
                shutil.rmtree(root, ignore_errors=True)
                toml = work / f"sweep_{n}_{mode}.toml"
                toml.write_text(
                    SWEEP.format(
                        root=root,
                        mode=mode,
                        model=args.model,
                        data1=files[0],
                        data2=files[1],
                        batch=args.batch_size,
                        shard=min(args.shard_examples, n),
                        tokens=args.max_new_tokens,
                        device=args.device,
                    )
                )
                t0 = time.perf_counter()
                torchrun(k, [str(Path(sys.executable).parent / "priorscope"), "sweep", str(toml)])
                times[mode].append(time.perf_counter() - t0)
        for mode, ts in times.items():
            wall = statistics.median(ts)
            rows.append(
                {
                    "examples": n,
                    "mode": mode,
                    "ranks": k,
                    "wall_s": wall,
                    "examples_per_s": 4 * n / wall,
                }
            )
    return rows


def print_tables(ranks: list[dict[str, Any]], modes: list[dict[str, Any]]) -> None:
    print("\nCapture throughput (medians; per-rank: own shards over own time)")
    print(
        "| ranks | ex/s | tokens/s | per-rank ex/s | per-rank tokens/s | efficiency | store MB/s |"
    )
    print("| ---: | ---: | ---: | --- | --- | ---: | ---: |")
    for r in ranks:
        per_ex = ", ".join(f"{p['examples_per_s']:.2f}" for p in r["per_rank"])
        per_tok = ", ".join(f"{p['tokens_per_s']:.0f}" for p in r["per_rank"])
        print(
            f"| {r['ranks']} | {r['examples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {per_ex} | "
            f"{per_tok} | {r['scaling_efficiency']:.2f} | {r['store_mb_per_s']:.2f} |"
        )
    if modes:
        print("\nSweep of 2 models x 2 benchmarks (wall includes process start and model loads)")
        print("| examples per benchmark | layout | ranks | wall s | ex/s |")
        print("| ---: | --- | ---: | ---: | ---: |")
        for m in modes:
            print(
                f"| {m['examples']} | {m['mode']} | {m['ranks']} | {m['wall_s']:.1f} | "
                f"{m['examples_per_s']:.2f} |"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2", help="Comma-separated rank counts, first = baseline.")
    p.add_argument("--model", default="builtin:organism", help="Path, builtin:NAME or random:SIZE.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--small", type=int, default=8, help="Small benchmark size of --modes.")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-examples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", action="store_true", help="Also compare sweep layouts.")
    p.add_argument("--out-json", type=Path, default=RESULTS)
    # worker-only arguments
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--store", default=None, help=argparse.SUPPRESS)
    p.add_argument("--timings", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    from priorscope.engine.data import synth

    with tempfile.TemporaryDirectory(prefix="priorscope_throughput_") as tmp:
        work = Path(tmp)
        cfg = synth.SynthConfig(n=args.examples, size=args.image_size, mc=True)
        args.data = synth.write_tsv(synth.generate(cfg), work / "bench.tsv")
        print(f"Capture of {args.examples} examples, model {args.model}, device {args.device}")
        ranks = ranks_section(args, work)
        modes = modes_section(args, work) if args.modes else []
    print_tables(ranks, modes)
    doc = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
        },
        "command": " ".join(["python", "benchmarks/throughput.py", *(argv or sys.argv[1:])]),
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("worker", "store")},
        "ranks": ranks,
        "modes": modes,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(doc, indent=1))
    print(f"JSON: {args.out_json}")


if __name__ == "__main__":
    main()
