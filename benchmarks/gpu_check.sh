#!/usr/bin/env bash
# GPU check: one prepared script, under 5 minutes, run on a CUDA machine from the repository root
# (e.g. through the device tool: `bash benchmarks/gpu_check.sh`; PYTHON=... picks the interpreter).
# Every section writes its logs and JSON into $OUT (default benchmarks/results). Sections are
# independent; add new ones at the end, each with its own `timeout`, so one failing stage does
# not hide the others' figures. Exit status 1 if any section failed.
#
# The whole script stays under BUDGET_S (default 290 s, the issue's 5 minutes less the start):
# each section's timeout is its own cap or what is left of the budget, whichever is less, and a
# section with under 15 s left is not started (logged in $OUT/skipped.txt, exit status 1).
#
# On a machine with pip and a registry (not the GPU machine), prepare the wheels first:
#   bash benchmarks/gpu_check.sh --prepare-wheels     # fills .whl/ (about 20 MB), then carry .whl
set -uo pipefail
cd "$(dirname "$0")/.."

# Packages the GPU image lacks (device README: Python 3.12, no registry there), pinned to what
# the CPU venv runs: zarr and dask for the store and analyses, kornia for the blur peer.
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 dask==2026.8.0
    distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0
    kornia==0.9.0 kornia_rs==0.2.0)
if [ "${1:-}" = "--prepare-wheels" ]; then
    mkdir -p .whl
    exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
fi

OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
STATUS=0
BUDGET_S="${BUDGET_S:-290}"
DEADLINE=$(( $(date +%s) + BUDGET_S ))
# cap SECONDS NAME: print the timeout for a section (its cap or the time left); fail if < 15 s.
cap() {
    local left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 15 ]; then
        echo "section $2 not started: ${left}s of the ${BUDGET_S}s budget left" | tee -a "$OUT/skipped.txt" >&2
        return 1
    fi
    [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}

# ---------------------------------------------------------------------------------------------
# Section 0: environment. Use .venv when present; without an installed priorscope, expose the
# top-level folders as priorscope.* through a throw-away shim package on PYTHONPATH.
# ---------------------------------------------------------------------------------------------
# The lent GPU image has torch, triton, cupy and transformers but no zarr/dask/kornia: a session
# prepares wheels into .whl/ (--prepare-wheels above, on the CPU machine) and carries .whl; they
# are installed into /tmp/site for this run only.
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
T=$(cap 120 gpu_tests) && timeout "$T" "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors tests 2>&1 | tee "$OUT/gpu_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 2: blur ladder benchmark (issues 3, 15): 256 x 448x448 RGB, full ladder: the fused
# Triton kernel and the torch path in one run, each's fraction of the byte floor, vs kornia
# (carried wheel; without it the torch path is the peer), plus block-size/precision variants.
# ---------------------------------------------------------------------------------------------
T=$(cap 90 blur_gpu) && timeout "$T" "$PY" benchmarks/blur_gpu.py --out "$OUT/blur_gpu.json" 2>&1 | tee "$OUT/blur_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 3: capture (issue 5; owned by the capture task).
# ---------------------------------------------------------------------------------------------
# Random-weight Qwen2.5-VL-3B architecture (36 layers, d_model 2048, 448x448 images = 256
# image tokens), bf16, 128 examples x 4 conditions (clean, blur@0.02, blur@0.08, total):
# plain generate vs priorscope capture vs naive capture (first 16 examples: it writes ~1.6 GB
# per batch and condition), then store writes vs dd and a one-layer read vs a memmap at 3B shape.
# The GPU capture test (tests/test_capture.py::test_gpu_capture_matches_cpu) runs in Section 1.
T=$(cap 150 capture) && timeout "$T" "$PY" benchmarks/capture.py --model-size 3b --device cuda --examples 128 \
    --batch-size 16 --repeats 1 --naive-examples 16 --io-examples 256 \
    --out-json "$OUT/capture_gpu.json" 2>&1 | tee "$OUT/capture_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 3b: decay sweep ratio (issue 15): the VLMEvalKit-style loop (PIL blur, encode,
# generate batch 1) against capture, random-weight Qwen2.5-VL-3B, bf16, 16 items x 8 conditions.
# ---------------------------------------------------------------------------------------------
T=$(cap 100 sweep) && timeout "$T" "$PY" benchmarks/sweep.py --models 3b --device cuda --dtype bf16 \
    --items 16 --size 448 --batch-size 16 --max-new-tokens 8 --start-repeats 1 --candidates \
    --out-json "$OUT/sweep_gpu.json" 2>&1 | tee "$OUT/sweep_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 3c: Qwen2-VL preprocessing (issue 15): the image processor on the host (with the
# blurred images' copy to the host and back) vs the same steps as tensor ops on the GPU,
# bitwise equal (checked on every timed batch), 16 images of 448x448 and of 480x640.
# ---------------------------------------------------------------------------------------------
T=$(cap 60 preprocess) && timeout "$T" "$PY" benchmarks/preprocess.py --device cuda \
    --out "$OUT/preprocess_gpu.json" 2>&1 | tee "$OUT/preprocess_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 4: layer replacement (issue 12): suffix replay vs one hooked full forward per patch.
# ---------------------------------------------------------------------------------------------
T=$(cap 120 patch) && timeout "$T" "$PY" benchmarks/patch.py --device cuda --examples 64 \
    --out-json "$OUT/patch_gpu.json" 2>&1 | tee "$OUT/patch_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# ---------------------------------------------------------------------------------------------
# Section 5: torchrun capture throughput (issue 14): 1 rank, then all GPUs (2 ranks on 1 GPU).
# ---------------------------------------------------------------------------------------------
NGPU="$(nvidia-smi -L | wc -l)"; [ "$NGPU" -gt 1 ] && RANKS="1,$NGPU" || RANKS="1,2"
T=$(cap 240 throughput) && timeout "$T" "$PY" benchmarks/throughput.py --device cuda --ranks "$RANKS" --model random:3b \
    --examples 128 --image-size 448 --batch-size 16 --shard-examples 32 --repeats 1 \
    --out-json "$OUT/throughput_gpu.json" 2>&1 | tee "$OUT/throughput_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# Section 6: probes (issue 11) on the GPU backend; sklearn samples off (they would start CUDA before a fork).
T=$(cap 300 probes) && timeout "$T" "$PY" benchmarks/probes.py --layers 4 --backend cuda --sample-linear 0 --sample-mlp 0 \
    --json "$OUT/probes_gpu.json" 2>&1 | tee "$OUT/probes_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

exit "$STATUS"
