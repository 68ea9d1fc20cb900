#!/usr/bin/env bash
# One device call for the attention / MHSA work: GPU tests, then the benchmarks, each under a
# time limit, logs and result rows copied to $OUT. The package is assembled in /tmp/pkg
# (orthoasr + kernels as orthoasr.kernels) so that every subpackage is importable.
set -uo pipefail
REPO=$PWD
export ORTHOASR_COMMIT=$(cat .commit 2>/dev/null)   # rows name it (bench/harness.py)
mkdir -p /tmp/pkg && cp -r "$REPO/orthoasr" /tmp/pkg/ && cp -r "$REPO/kernels" /tmp/pkg/orthoasr/kernels
export PYTHONPATH=/tmp/pkg:$REPO PYTHONUNBUFFERED=1
cd /tmp
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout "${TESTS_S:-150}" python3 -m pytest -q -p no:cacheprovider -m gpu \
  "$REPO/tests/test_gated_attention.py" "$REPO/tests/test_gated_mhsa.py" 2>&1 \
  | tee "$OUT/gpu_tests_attention.log" | tail -30
timeout "${ATTN_S:-100}" python3 -m bench.bench_attention ${ATTN_ARGS:---variants} 2>&1 \
  | tee "$OUT/bench_attention.log"
timeout "${MHSA_S:-120}" python3 -m bench.bench_mhsa 2>&1 | tee "$OUT/bench_mhsa.log"
cp "$REPO/bench/results/kernels.json" "$OUT/" 2>/dev/null || true
