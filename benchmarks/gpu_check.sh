#!/usr/bin/env bash
# GPU check: one prepared script, under 5 minutes, run on a CUDA machine from the repository root
# (e.g. through the device tool: `bash benchmarks/gpu_check.sh`; PYTHON=... picks the interpreter).
# Every section writes its logs and JSON into $OUT (default benchmarks/results). Sections are
# independent; add new ones at the end, each with its own `timeout`, so one failing stage does
# not hide the others' figures. Exit status 1 if any section failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
STATUS=0

# ---------------------------------------------------------------------------------------------
# Section 0: environment. Use .venv when present; without an installed priorscope, expose the
# top-level folders as priorscope.* through a throw-away shim package on PYTHONPATH.
# ---------------------------------------------------------------------------------------------
# The lent GPU image has torch, triton, cupy and transformers but no zarr/dask: a session prepares
# wheels here into .whl/ (see the device tool's README: pip download --no-deps for zarr, numcodecs,
# donfig, google-crc32c, crc32c, dask, distributed, typer, rich and what they need) and carries
# .whl; they are installed into /tmp/site for this run only.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import priorscope.kernels" 2>/dev/null; then
    SHIM="$(mktemp -d)"
    mkdir -p "$SHIM/priorscope"
    touch "$SHIM/priorscope/__init__.py"
    for top in engine kernels cli; do ln -s "$PWD/$top" "$SHIM/priorscope/$top"; done
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu_env.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    2>&1 | tee -a "$OUT/gpu_env.txt"

# ---------------------------------------------------------------------------------------------
# Section 1: every GPU-marked test in the suite (kernels, capture, probes ...).
# ---------------------------------------------------------------------------------------------
timeout 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors tests 2>&1 | tee "$OUT/gpu_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 2: blur ladder benchmark (issue 3): 256 x 448x448 RGB, full ladder, vs kornia.
# ---------------------------------------------------------------------------------------------
timeout 90 "$PY" benchmarks/blur_gpu.py --out "$OUT/blur_gpu.json" 2>&1 | tee "$OUT/blur_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 3: capture (issue 5; owned by the capture task).
# ---------------------------------------------------------------------------------------------
# Random-weight Qwen2.5-VL-3B architecture (36 layers, d_model 2048, 448x448 images = 256
# image tokens), bf16, 128 examples x 4 conditions (clean, blur@0.02, blur@0.08, total):
# plain generate vs priorscope capture vs naive capture (first 16 examples: it writes ~1.6 GB
# per batch and condition), then store writes vs dd and a one-layer read vs a memmap at 3B shape.
# The GPU capture test (tests/test_capture.py::test_gpu_capture_matches_cpu) runs in Section 1.
timeout 150 "$PY" benchmarks/capture.py --model-size 3b --device cuda --examples 128 \
    --batch-size 16 --repeats 1 --naive-examples 16 --io-examples 256 \
    --out-json "$OUT/capture_gpu.json" 2>&1 | tee "$OUT/capture_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 4: layer replacement (issue 12): suffix replay vs one hooked full forward per patch.
# ---------------------------------------------------------------------------------------------
timeout 120 "$PY" benchmarks/patch.py --device cuda --examples 64 \
    --out-json "$OUT/patch_gpu.json" 2>&1 | tee "$OUT/patch_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 5: torchrun capture throughput (issue 14): 1 rank, then all GPUs (2 ranks on 1 GPU).
# ---------------------------------------------------------------------------------------------
NGPU="$(nvidia-smi -L | wc -l)"; [ "$NGPU" -gt 1 ] && RANKS="1,$NGPU" || RANKS="1,2"
timeout 240 "$PY" benchmarks/throughput.py --device cuda --ranks "$RANKS" --model random:3b \
    --examples 128 --image-size 448 --batch-size 16 --shard-examples 32 --repeats 1 \
    --out-json "$OUT/throughput_gpu.json" 2>&1 | tee "$OUT/throughput_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# Section 6: probes (issue 11) on the GPU backend; sklearn samples off (they would start CUDA before a fork).
timeout 300 "$PY" benchmarks/probes.py --layers 4 --backend cuda --sample-linear 0 --sample-mlp 0 \
    --json "$OUT/probes_gpu.json" 2>&1 | tee "$OUT/probes_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

exit "$STATUS"
