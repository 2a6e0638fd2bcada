#!/usr/bin/env bash
# GPU check, on a machine with a CUDA GPU (CI never runs it): the CUDA / fp16 / TensorRT
# parity tests, then ViT-B-32 throughput at batch 1/8/64 (CUDA fp32, fp16, TensorRT when the
# onnxruntime-gpu build has it), all written to one file.
#
#   bash bench/gpu_check.sh [OUT_FILE]        (default work/gpu_check.txt)
#
# Needs: NVIDIA driver + CUDA 12 / cuDNN 9 libraries that onnxruntime-gpu can load (the
# nvidia-*-cu12 wheels it pulls with [cuda,cudnn] are enough), and the project installed:
# it creates .venv-gpu with '.[train,dev,gpu]', replacing the CPU onnxruntime wheel with
# onnxruntime-gpu (both install the same `onnxruntime` module, so only one may be present).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-work/gpu_check.txt}
VENV=${GPU_VENV:-.venv-gpu}
PY=${PYTHON:-python3}
mkdir -p "$(dirname "$OUT")"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet -e '.[train,dev]'
    "$VENV/bin/pip" uninstall --quiet -y onnxruntime
    "$VENV/bin/pip" install --quiet 'onnxruntime-gpu[cuda,cudnn]>=1.18'
fi

{
    echo "# clipserve GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$VENV/bin/python" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
    echo
    echo "## parity tests (pytest -m gpu)"
} | tee "$OUT"

set +e
"$VENV/bin/python" -m pytest tests/test_gpu.py -m gpu -q -rs -p no:cacheprovider 2>&1 | tee -a "$OUT"
TESTS=${PIPESTATUS[0]}
set -e

{
    echo
    echo "## throughput (bench/bench_gpu.py, ViT-B-32, batch 1/8/64)"
} | tee -a "$OUT"
"$VENV/bin/python" bench/bench_gpu.py --model ViT-B-32 --batches 1 8 64 2>&1 | tee -a "$OUT"

echo "wrote $OUT (parity tests exit code $TESTS)"
exit "$TESTS"
