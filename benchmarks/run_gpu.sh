#!/usr/bin/env bash
# GPU checks and GPU benchmark sections, in one go, on a machine with a CUDA GPU:
#   bash benchmarks/run_gpu.sh OUT_DIR
# builds cldfast for the local GPU (editable, no build isolation: uses the installed torch),
# runs the CUDA tests, then writes the GPU sections (update-gpu, overhead-gpu, scale-gpu) into
# OUT_DIR/RESULTS_gpu.md; splice them into benchmarks/RESULTS.md with
#   python benchmarks/_results.py --merge OUT_DIR/RESULTS_gpu.md
set -uo pipefail
out=${1:?usage: run_gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
arch=$($py -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.log"
echo "== build (sm_$arch)" | tee -a "$out/gpu.log"
timeout 300 $py -m pip install -q --no-build-isolation --no-deps -e . \
  -C cmake.define.CLDFAST_CUDA=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" \
  >"$out/build.log" 2>&1 || { echo "build failed"; tail -40 "$out/build.log"; exit 1; }
(cd /tmp && $py -m cldfast.cli info) 2>&1 | tee -a "$out/gpu.log"
echo "== pytest -m cuda" | tee -a "$out/gpu.log"
timeout 240 $py -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -40 | tee -a "$out/gpu.log"
status=${PIPESTATUS[0]}
echo "== benchmarks" | tee -a "$out/gpu.log"
timeout 120 $py benchmarks/bench_update.py --gpu-only --repeats 9 --results "$out/RESULTS_gpu.md" 2>&1 | tail -25 | tee -a "$out/gpu.log"
timeout 150 $py benchmarks/bench_scale.py --gpu-only --results "$out/RESULTS_gpu.md" 2>&1 | tail -15 | tee -a "$out/gpu.log"
timeout 300 $py benchmarks/bench_overhead.py --gpu-only --steps-gpu 60 --results "$out/RESULTS_gpu.md" 2>&1 | tail -30 | tee -a "$out/gpu.log"
exit "$status"
