#!/usr/bin/env bash
# GPU check of the engine (issues 10.5, 26): H̄ by the loop and vmap back ends for LeNet-5,
# VGG-11' and ResNet-18 at batches 256 and 1024 (ratio to one gradient, peak memory,
# predicted peak), the 100M-class GPT (12 x 12 x 768) head by head (S = 688: rows per pass
# planned or one, vmap), D^(3) of LeNet-5, one VGG-11' H̄ over 10,000 samples. JSON lines on
# stdout; finishes in under 8 minutes on one H100/H200 (the Python side stops starting
# measurements after --budget-s, 420 s by default; `timeout` is the backstop).
#
#   PYTHONPATH=. bash benchmarks/gpu_check.sh                      # GPU machine, repo root
#   PYTHONPATH=. bash benchmarks/gpu_check.sh --quick --device cpu # CI smoke run (seconds)
#
# Environment: PYTHON (default python3), HESSIAN_LENS_GPU_CHECK_QUICK=1 (same as --quick),
# GPU_CHECK_TIMEOUT_S (default 470).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
args=("$@")
if [[ "${HESSIAN_LENS_GPU_CHECK_QUICK:-0}" == "1" ]]; then
    args+=(--quick)
fi
export PYTHONPATH="${PYTHONPATH:-.}"
export PYTHONUNBUFFERED=1
exec timeout --signal=TERM --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-470}" \
    "${PYTHON:-python3}" benchmarks/gpu_check.py "${args[@]}"
