#!/usr/bin/env bash
# Device call on a 2-GPU kind (nvidia-h100-x2): torchrun scaling of the paper config.
# Carry .whl (espeakng-loader, sentencepiece) and .commit. NVLink multicast stays off.
set -uo pipefail
REPO=$PWD
export ORTHOASR_COMMIT=$(cat .commit 2>/dev/null)   # rows name it (bench/harness.py)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
rm -rf /tmp/site_lead && python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation \
  --target /tmp/site_lead .whl/*.whl . || exit 1
export PYTHONPATH=/tmp/site_lead:$REPO PYTHONUNBUFFERED=1
cd /tmp
nvidia-smi --query-gpu=name --format=csv
python3 -m bench.ddp_scaling --gpus 2 --steps 30 2>&1 | tee $OUT/ddp.log | tail -40
cp $REPO/bench/results/ddp.json $OUT/
