"""CPU smoke test at real size: random-weight Qwen2.5-VL-3B and LLaVA-NeXT-7B configs in bf16.

Shape and memory bugs that only show at real scale (a 151936-token vocabulary, 36 or 32
decoder layers of width 2048 or 4096, a 32-block windowed vision tower, LLaVA-NeXT's any-resolution
tiles of 576 tokens) show up here without a GPU. For each model, in its own process:

* build the published architecture (values typed in from the released configs: nothing can
  be downloaded) with random weights, directly in bf16 (one copy of the weights in memory);
  tokenizer and processor are the test suite's word-level ones with the real image settings;
* ``capture`` two synthetic multiple-choice examples under two conditions (clean, blur@0.04),
  hidden states kept (every layer, three reductions, bf16), answers generated greedily;
* ``priorscope store verify --deep`` on the store;
* report the peak resident memory (``ru_maxrss``) against the weights' bytes, the times, and the
  shape of every array in the store.

The 7B runs only when ``MemAvailable`` (what ``free -g`` calls available) is at least
``--min-free-gb`` (18) right before it starts; otherwise its row says why it was not run.
Prints a table and writes benchmarks/results/smoke_real_size.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/smoke_real_size.py            # both models
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/smoke_real_size.py --models qwen2_5_vl-3b
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their pools

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "smoke_real_size.json"
CLI = [sys.executable, "-P", "-m", "priorscope.cli.main"]
MODELS = ("qwen2_5_vl-3b", "llava_next-7b")
GIB = 1024**3

# Qwen/Qwen2.5-VL-3B-Instruct config.json (text decoder and vision tower).
QWEN_3B = dict(
    d_model=2048,
    layers=36,
    heads=16,
    kv_heads=2,
    ffn=11008,
    vision_depth=32,
    vision_width=1280,
    vision_heads=16,
    window=112,
    fullatt_blocks=(7, 15, 23, 31),
    max_positions=128000,
    rope_theta=1e6,
    vocab_size=151936,
)
QWEN_3B_VISION_FFN = 3420  # configs.py's builder uses 2 x width; the release uses 3420
QWEN_IMAGE = 448  # 16 x 16 merged image tokens per image

# llava-hf/llava-v1.6-vicuna-7b-hf config.json: CLIP ViT-L/14 at 336 px, Vicuna-7B (LLaMA).
LLAVA_NEXT_7B_TEXT = dict(
    model_type="llama",
    vocab_size=32064,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
LLAVA_NEXT_7B_VISION = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)
LLAVA_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
LLAVA_IMAGE = 336  # one tile plus the base image: 2 x 576 patch tokens before unpadding


def rss_gib() -> float:
    """Return this process's resident memory now, in GiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def peak_rss_gib() -> float:
    """Return this process's peak resident memory so far, in GiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def available_gib() -> float:
    """Return MemAvailable (``free``'s 'available' column), in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def build_qwen_3b() -> tuple[Any, Any]:
    """Return (model, processor): random Qwen2.5-VL-3B in bf16 and a 448 px processor."""
    import torch
    import transformers

    from priorscope.engine.models.configs import QwenSizes, qwen_vl_config, qwen_vl_processor
    from priorscope.engine.models.qwen2_vl import QWEN_CHAT_TEMPLATE
    from priorscope.engine.models.wordlevel import word_tokenizer

    tok = word_tokenizer("qwen")
    config = qwen_vl_config("qwen2_5_vl", tok, QwenSizes(**QWEN_3B))  # type: ignore[arg-type]
    config.vision_config.intermediate_size = QWEN_3B_VISION_FFN
    config.tie_word_embeddings = True
    config.text_config.tie_word_embeddings = True
    config.text_config.rms_norm_eps = 1e-6
    model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(
        config, dtype=torch.bfloat16, attn_implementation="sdpa"
    )
    processor = qwen_vl_processor("qwen2_5_vl", tok, QWEN_IMAGE, QWEN_CHAT_TEMPLATE)
    return model, processor


def build_llava_next_7b() -> tuple[Any, Any]:
    """Return (model, processor): random LLaVA-NeXT-7B (Vicuna) in bf16, any-resolution tiles."""
    import torch
    import transformers
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    from priorscope.engine.models.llava import LLAVA_CHAT_TEMPLATE
    from priorscope.engine.models.wordlevel import word_tokenizer

    tok = word_tokenizer("llama")
    text = dict(
        LLAVA_NEXT_7B_TEXT,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = transformers.LlavaNextConfig(
        vision_config=LLAVA_NEXT_7B_VISION,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=LLAVA_PINPOINTS,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = transformers.LlavaNextForConditionalGeneration._from_config(
        config, dtype=torch.bfloat16, attn_implementation="sdpa"
    )
    improc = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=LLAVA_PINPOINTS,
    )
    processor = transformers.LlavaNextProcessor(
        image_processor=improc,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


def build_adapter(name: str) -> Any:
    """Return an adapter over the random-weight model ``name`` (one of MODELS)."""
    if name == "qwen2_5_vl-3b":
        from priorscope.engine.models.qwen2_5_vl import Qwen2_5_VLAdapter as Base

        model, processor = build_qwen_3b()
    else:
        from priorscope.engine.models.llava_next import LlavaNextAdapter as Base

        model, processor = build_llava_next_7b()
    model.eval()

    class SmokeAdapter(Base):  # type: ignore[misc, valid-type]
        def weights_sha256(self) -> str:
            # Hashing 7-14 GB of random weights would dominate the run and tell nothing.
            return f"random-init ({name})"

    return SmokeAdapter(model, processor, f"random:{name}")


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build ``name``, capture two examples x two conditions, verify; return the record."""
    import torch

    from priorscope.engine.capture import CaptureConfig, capture
    from priorscope.engine.data import synth
    from priorscope.engine.store import info

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    adapter = build_adapter(name)
    build_s = time.perf_counter() - t0
    params = list(adapter.model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    after_build = rss_gib()
    size = QWEN_IMAGE if name.startswith("qwen") else LLAVA_IMAGE
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        data = synth.write_tsv(
            synth.generate(synth.SynthConfig(n=2, size=size, mc=True)), work / "smoke.tsv"
        )
        cfg = CaptureConfig(
            model=f"random:{name}",
            data=str(data),
            out=str(work / "smoke.zarr"),
            ladder=(0.04,),
            total=False,
            batch_size=2,
            device="cpu",
            dtype="bf16",
            max_new_tokens=args.max_new_tokens,
            progress=False,
        )
        t0 = time.perf_counter()
        path = capture(cfg, adapter=adapter)
        capture_s = time.perf_counter() - t0
        verify = subprocess.run(
            [*CLI, "store", "verify", "--deep", path], capture_output=True, text=True
        )
        summary = info(path)
    return {
        "model": name,
        "ran": True,
        "params": sum(p.numel() for p in params),
        "weights_gib": weight_bytes / GIB,
        "dtype": str(adapter.dtype).replace("torch.", ""),
        "build_s": build_s,
        "capture_s": capture_s,
        "rss_after_build_gib": after_build,
        "peak_rss_gib": peak_rss_gib(),
        "peak_over_weights": peak_rss_gib() / (weight_bytes / GIB),
        "verify_exit": verify.returncode,
        "verify_output": (verify.stdout + verify.stderr).strip()[-2000:],
        "examples": summary["examples"],
        "committed": summary["committed"],
        "conditions": summary["conditions"],
        "layers": len(summary["layers"]),
        "reductions": summary["reductions"],
        "hidden_dtype": summary["hidden_dtype"],
        "arrays": {
            k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in summary["arrays"].items()
        },
    }


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``name`` in a child process (its own peak RSS); return its record or why it did not."""
    free = available_gib()
    need = args.min_free_gb if name == "llava_next-7b" else args.min_free_gb_3b
    if free < need:
        reason = f"not run: {free:.1f} GiB available, {need:g} GiB required (free -g)"
        print(f"{name}: {reason}", flush=True)
        return {"model": name, "ran": False, "available_gib": free, "reason": reason}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, "-P", __file__, "--child", name, "--child-out", out.name]
        cmd += ["--max-new-tokens", str(args.max_new_tokens)]
        if args.workdir:
            cmd += ["--workdir", args.workdir]
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if proc.returncode != 0:
            reason = f"failed: child exited with {proc.returncode} (output above)"
            return {"model": name, "ran": False, "available_gib": free, "reason": reason}
        record = json.loads(Path(out.name).read_text())
    record["available_gib_before"] = free
    return record


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print one line per model, then each store's array shapes."""
    head = f"{'model':<16}{'params':>8}{'weights':>9}{'peak RSS':>10}{'peak/w':>8}"
    print(head + f"{'build s':>9}{'capture s':>11}{'verify':>8}")
    for r in rows:
        if not r["ran"]:
            print(f"{r['model']:<16}  {r['reason']}")
            continue
        print(
            f"{r['model']:<16}{r['params'] / 1e9:>7.2f}B{r['weights_gib']:>8.2f}G"
            f"{r['peak_rss_gib']:>9.2f}G{r['peak_over_weights']:>8.2f}{r['build_s']:>9.1f}"
            f"{r['capture_s']:>11.1f}{'ok' if r['verify_exit'] == 0 else 'FAILED':>8}"
        )
    for r in rows:
        if r["ran"]:
            print(f"\n{r['model']} store ({r['committed']}/{r['examples']} committed):")
            for name, a in sorted(r["arrays"].items()):
                print(f"  {name:<24}{a['dtype']:<16}{tuple(a['shape'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-free-gb", type=float, default=18.0, help="needed for the 7B")
    parser.add_argument("--min-free-gb-3b", type=float, default=10.0, help="needed for the 3B")
    parser.add_argument("--workdir", default=None, help="where the stores go (default /tmp)")
    parser.add_argument("--out-json", type=Path, default=RESULTS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        Path(args.child_out).write_text(json.dumps(run_child(args.child, args)))
        return
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"Expected --models among {', '.join(MODELS)}. Got {unknown[0]!r}.")
    rows = [run_model(name, args) for name in names]
    print_table(rows)
    payload = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpu_threads": args.threads,
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out_json}")


if __name__ == "__main__":
    main()
