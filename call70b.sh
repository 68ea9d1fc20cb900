#!/usr/bin/env bash
# minimal: the attention GPU tests at this tree's kernel, then the core's A/B (dot, old)
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
REPO=$PWD; C=$(cat .commit)
python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1
KA=/tmp/site/orthoasr/kernels/gated_attention.py
cd /tmp; SECONDS=0
[ "${TESTS:-1}" = 1 ] && timeout -s KILL 100 python3 -m pytest -v -p no:cacheprovider -m gpu -rf $REPO/tests/test_gated_attention.py > $OUT/t_attn.log 2>&1
echo "tests ${SECONDS}s: $(tail -1 $OUT/t_attn.log)"; grep -E "^FAILED|^ERROR" $OUT/t_attn.log | head
cd $REPO
for v in dot old; do
  cp ab/$v.py $KA; SECONDS=0
  ORTHOASR_COMMIT=$C-$v timeout 60 python3 -m bench.bench_floor --cases B32xT250 --modules attention \
    --timings graph --providers ours sdpa_nomask --no-compile > $OUT/ab_$v.log 2>&1
  echo "$v rc=$? ${SECONDS}s"; grep -E "fwd" $OUT/ab_$v.log | tail -4
  cp bench/results/kernels.json $OUT/
done
