#!/usr/bin/env bash
# session 70's device call (not committed). Call A: GPU tests; attention dq A/B (ab/*.py)
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
REPO=$PWD; C=$(cat .commit)
python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/site .whl/*.whl . || exit 1
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1
KA=/tmp/site/orthoasr/kernels/gated_attention.py
T="timeout -s KILL ${TESTS_S:-220} python3 -m pytest -v -p no:cacheprovider -m gpu -rf --durations=5"
cd /tmp; START=$(date +%s); SECONDS=0
$T $REPO/tests/test_gated_attention.py $REPO/tests/test_gated_mhsa.py > $OUT/t_attn.log 2>&1 &
$T $REPO/tests/test_learning.py > $OUT/t_learn.log 2>&1 &
$T $REPO/tests/test_data_features.py $REPO/tests/test_remove_dc.py $REPO/tests/test_transcribe.py \
  $REPO/tests/test_transcribe_stream.py > $OUT/t_misc.log 2>&1 &
wait; echo "tests ${SECONDS}s"
for f in $OUT/t_*.log; do echo "$f: $(tail -1 $f)"; grep -E "^FAILED|^ERROR" $f | head; done
cd $REPO
for v in ${VARIANTS:-dot old dot rowsum}; do
  cp ab/$v.py $KA; SECONDS=0
  ORTHOASR_COMMIT=$C-$v timeout 100 python3 -m bench.bench_floor --cases B32xT250 --modules attention \
    --timings graph --providers ours sdpa_nomask --no-compile > $OUT/ab_$v.log 2>&1
  echo "$v rc=$? ${SECONDS}s"; grep -E "fwd" $OUT/ab_$v.log | tail -4
done
cp ab/dot.py $KA
cp bench/results/kernels.json $OUT/
LEFT=$(( ${LIMIT:-530} - ($(date +%s) - START) ))
echo "left ${LEFT}s"; export ORTHOASR_COMMIT=$C
if [ $LEFT -gt 120 ]; then
  timeout $LEFT python3 -m bench.bench_floor --cases B16xT750 --modules ffn conv --timings graph \
    --providers ours dense_floor compile_floor > $OUT/floor_b16.log 2>&1; echo "floors rc=$?"
  cp bench/results/kernels.json $OUT/
fi
