#!/usr/bin/env bash
# One device call on nvidia-h100-x2 for issues 5 and 6: the paper config on the `base`
# synthetic corpus, both stages, ours vs the torch reference (GPU 0), `orthoasr eval` on
# the result, then torchrun scaling 1 -> 2 GPUs on the same corpus. Carry .whl and .commit.
set -uo pipefail
REPO=$PWD
export ORTHOASR_COMMIT=$(cat .commit 2>/dev/null)   # rows name it (bench/harness.py)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
rm -rf /tmp/site_lead && python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-build-isolation --target /tmp/site_lead .whl/*.whl . || exit 1
export PYTHONPATH=/tmp/site_lead:$REPO PYTHONUNBUFFERED=1
cd /tmp
nvidia-smi --query-gpu=name --format=csv,noheader
WORK=/tmp/paper
CUDA_VISIBLE_DEVICES=0 timeout ${TRAIN_S:-330} python3 -m bench.train_step --preset base \
  --work-dir $WORK --steps ${STEPS:-40} --baseline-steps 10 --out $OUT > $OUT/train.log 2>&1
echo "train_step rc=$?"; grep -E "corpus|after|rows|Error|error" $OUT/train.log | tail -8
CUDA_VISIBLE_DEVICES=0 timeout 90 python3 -m orthoasr eval --checkpoint $WORK/auto/checkpoint.pt \
  --heatmap $OUT/heatmap_paper.png > $OUT/eval.log 2>&1
echo "eval rc=$?"; tail -12 $OUT/eval.log
timeout ${DDP_S:-300} python3 -m bench.ddp_scaling --preset base --work-dir $WORK --gpus 2 \
  --steps ${DDP_STEPS:-25} > $OUT/ddp.log 2>&1
echo "ddp rc=$?"; grep -E "GPU|Error|error" $OUT/ddp.log | tail -6
cp $REPO/bench/results/ddp.json $OUT/ 2>/dev/null
