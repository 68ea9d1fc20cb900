#!/usr/bin/env bash
# Branch wip/next-gpu's device script (not for main): the two kernel changes waiting for a
# GPU, tested and A/B-timed against main's kernels on one card. STAGES (default all):
#   tests  the GPU tests they touch, in five groups at once (~4 min)
#   rest   conv's and learning's GPU tests, the sigmoid's and the shared-keys dq test's (what
#          session 71's H100 call left, and the test 8661242 changed)
#   sweep  the SiLU GEMMs' tiles with the fast sigmoid (gemm_sweep --tma; ~3 min?)
#   ab     the attention core (dq: ab/dot.py = this branch, ab/old.py = main) and the FFN
#          and conv modules (the sigmoid: this branch's kernels against ab/*_main.py), B32xT250,
#          graph replays, each timed twice around the other (~3 min)
#   floors this branch's FFN and attention rows against compile and SDPA (the targets)
# Rows of main's forms name <commit>-main-*; carry .commit and .whl. Before the calls, here:
# `bash call71.sh prepare` writes ab/ (untracked, so the call's copy of the tree has it).
if [ "${1:-}" = prepare ]; then
  mkdir -p ab && git show main:kernels/gated_attention.py > ab/old.py &&
    cp kernels/gated_attention.py ab/dot.py && git show main:kernels/common.py > ab/common_main.py &&
    git show main:kernels/gated_matmul.py > ab/gated_matmul_main.py && ls ab; exit
fi
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
REPO=$PWD; C=$(cat .commit); STAGES=${STAGES:-tests ab floors}
has() { [[ " $STAGES " == *" $1 "* ]]; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/site .whl/*.whl . || exit 1
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1
K=/tmp/site/orthoasr/kernels
if has tests; then
  T="timeout -s KILL ${TESTS_S:-240} python3 -m pytest -v -p no:cacheprovider -m gpu -rf --durations=5"
  cd /tmp; SECONDS=0
  $T $(printf "$REPO/tests/%s " test_gated_attention.py test_gated_mhsa.py) > $OUT/t_attn.log 2>&1 &
  $T $(printf "$REPO/tests/%s " test_gated_ffn.py test_gated_matmul.py test_launch.py) \
    > $OUT/t_ffn.log 2>&1 &
  $T $REPO/tests/test_gated_conv.py > $OUT/t_conv.log 2>&1 &
  $T $REPO/tests/test_learning.py > $OUT/t_learn.log 2>&1 &
  [ "${MISC:-1}" = 1 ] && $T $(printf "$REPO/tests/%s " test_data_features.py test_remove_dc.py test_transcribe.py \
    test_transcribe_stream.py) > $OUT/t_misc.log 2>&1 &
  wait; echo "tests ${SECONDS}s"; cd $REPO
  for f in $OUT/t_*.log; do echo "$f: $(tail -1 $f)"; grep -E "^FAILED|^ERROR" $f | head; done
fi
if has rest; then   # what session 71's H100 call left unrun or failed (conv's, learning's, the sigmoid's)
  T="timeout -s KILL ${TESTS_S:-300} python3 -m pytest -v -p no:cacheprovider -m gpu -rf --durations=5"
  cd /tmp; SECONDS=0
  $T $REPO/tests/test_gated_conv.py > $OUT/t_conv.log 2>&1 &
  $T $REPO/tests/test_learning.py > $OUT/t_learn.log 2>&1 &
  $T $REPO/tests/test_launch.py -k sigmoid > $OUT/t_sigmoid.log 2>&1 &
  $T $REPO/tests/test_gated_attention.py -k shared_keys > $OUT/t_shared.log 2>&1 &
  wait; echo "rest ${SECONDS}s"; cd $REPO
  for f in $OUT/t_*.log; do echo "$f: $(tail -1 $f)"; grep -E "^FAILED|^ERROR" $f | head; done
fi
if has sweep; then   # the FFN's SiLU GEMMs at every tile with this branch's sigmoid, TMA
  (cd /tmp && timeout ${SWEEP_S:-300} python3 -m bench.gemm_sweep --tma --families rows \
    --only "g1 xn@W1^T silu" "g3 dy@W2 silu" > $OUT/sweep.log 2>&1)
  echo "sweep rc=$?"; tail -30 $OUT/sweep.log
fi
floor() {   # label, then bench_floor's arguments
  local label=$1; shift; SECONDS=0
  (cd /tmp && ORTHOASR_COMMIT=$label timeout ${AB_S:-150} python3 -m bench.bench_floor \
    --out $REPO/bench/results --timings graph "$@" >> $OUT/ab.log 2>&1)
  echo "$label rc=$? ${SECONDS}s"
}
if has ab; then
  for v in ${ATT_SEQ:-dot old dot}; do
    cp ab/$v.py $K/gated_attention.py
    floor $C$([ $v = old ] && echo -main-dq) --cases B32xT250 --modules attention \
      --providers ours sdpa_nomask --no-compile
  done
  cp ab/dot.py $K/gated_attention.py
  for v in ${FFN_SEQ:-new main new}; do
    if [ $v = main ]; then cp ab/common_main.py $K/common.py; cp ab/gated_matmul_main.py $K/gated_matmul.py
    else cp kernels/common.py kernels/gated_matmul.py $K/; fi
    floor $C$([ $v = main ] && echo -main-sigmoid) --cases B32xT250 --modules ffn conv \
      --gates all-on soft --providers ours --no-compile
  done
  cp kernels/common.py kernels/gated_matmul.py $K/
  cp bench/results/kernels.json $OUT/
fi
if has floors; then
  AB_S=300 floor $C --cases B32xT250 --modules ffn --providers ours dense_floor compile_floor
  floor $C --cases B32xT250 --modules attention --providers ours sdpa_mask sdpa_nomask
  cp bench/results/kernels.json $OUT/
fi
grep -E "^B32|ours" $OUT/ab.log | tail -40
