#!/usr/bin/env bash
# One device call for the whole kernel set: install, then the stages named in $STAGES
# (default: all) each under its own time limit, logs and result rows copied to $OUT
# (at most 8 files come back). Carry .commit so that rows name the commit.
#   tests    every gpu-marked test           profile  bench/profile_host.py (host overhead)
#   modules  MHSA + FFN/conv module benches  kernels  OrthoSoftmax + attention-core benches
#   ddp      bench/ddp_scaling.py (2 GPUs; carry .whl for the synthetic corpus)
set -uo pipefail
REPO=$PWD
export ORTHOASR_COMMIT=$(cat .commit 2>/dev/null)   # rows name it (bench/harness.py)
STAGES=${STAGES:-tests profile modules kernels}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
rm -rf /tmp/site_lead && python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-build-isolation --target /tmp/site_lead $(ls .whl/*.whl 2>/dev/null) . || exit 1
export PYTHONPATH=/tmp/site_lead:$REPO PYTHONUNBUFFERED=1
cd /tmp
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
has() { [[ " $STAGES " == *" $1 "* ]]; }
if has tests; then
  timeout ${TESTS_S:-270} python3 -m pytest -q -p no:cacheprovider -m gpu $REPO/tests \
    > $OUT/gpu_tests.log 2>&1
  echo "tests rc=$?"; grep -E "passed|failed|^FAILED|^ERROR" $OUT/gpu_tests.log | tail -12
fi
if has profile; then
  timeout ${PROFILE_S:-90} python3 -m bench.profile_host > $OUT/profile_host.log 2>&1
  echo "profile rc=$?"; grep -E "^---" $OUT/profile_host.log
  cp $REPO/bench/results/host_overhead.json $OUT/
fi
if has modules; then
  timeout ${MHSA_S:-120} python3 -m bench.bench_mhsa > $OUT/bench_modules.log 2>&1
  echo "mhsa rc=$?"
  timeout ${FFN_S:-180} python3 -m bench.bench_modules_ffn_conv >> $OUT/bench_modules.log 2>&1
  echo "ffn/conv rc=$?"
  cp $REPO/bench/results/kernels.json $OUT/
fi
if has kernels; then
  timeout ${ORTHO_S:-60} python3 -m bench.bench_ortho_softmax > $OUT/bench_kernels.log 2>&1
  echo "ortho rc=$?"
  timeout ${ATTN_S:-120} python3 -m bench.bench_attention >> $OUT/bench_kernels.log 2>&1
  echo "attention rc=$?"
  cp $REPO/bench/results/ortho_softmax.json $REPO/bench/results/kernels.json $OUT/
fi
if has ddp; then
  timeout ${DDP_S:-330} python3 -m bench.ddp_scaling --preset ${PRESET:-base} \
    --work-dir /tmp/paper --gpus 2 --steps ${DDP_STEPS:-40} > $OUT/ddp.log 2>&1
  echo "ddp rc=$?"; grep -E "GPU\(s\):|Error" $OUT/ddp.log | tail -4
  cp $REPO/bench/results/ddp.json $OUT/
fi
