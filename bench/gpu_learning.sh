#!/usr/bin/env bash
# One device call on nvidia-h200-x2 for issue 11 (does the Triton path learn?). Carry .whl
# (eSpeak NG for the corpus), .commit and, for the before/after check, .old: an export of
# the commit before the fix (git archive f6d7667 | tar -x -C .old).
#   GPU 0: the Triton backend, GPU 1: the torch backend, each running at once (on a machine
#   of one GPU, both on GPU 0)
#     plain   the paper-size Conformer-CTC (one budget, no SpecAugment), 1600 steps
#     five    the paper config with its five budgets, stage 1 of 1300 steps
#     fp32    the plain model through the torch backend in fp32 (GPU 1): the tie-breaker
#             when the two bf16 curves part
#   RUNS picks the trainings: plain_auto plain_torch five fp32 (default: the first three)
#   ORTHOASR_KERNEL_MASKS=1: the torch backend draws the kernels' dropout masks (same masks)
#   SEEDS: the trainings' seeds (default 0); each seed runs the picked trainings, all at once
#     (four plain trainings, two seeds, took ~330 s on one H200)
#   beside them: tests/test_learning.py on the fix and on .old, or with ALL_TESTS=1 the
#   whole gpu test set (then keep to two trainings, e.g. RUNS="plain_auto fp32"), or with
#   TESTS_K=EXPR only the gpu tests pytest -k EXPR picks (a short budget's call).
#   PROBE=1: also bench.learning_probe on the first seed (600 torch-backend steps, then each
#     backend's gradients against fp64, every gated module and the last MHSA modules'
#     attention core replayed alone; ~3 minutes beside the trainings): probe.log
# Both GPUs run two trainings and tests at once: the step times in these rows are for the
# learning check only, not for speed comparisons. Everything comes back in one tarball,
# refreshed every 30 s while the trainings run (a call cut by its limit returns the curves).
set -uo pipefail
REPO=$PWD
export ORTHOASR_COMMIT=$(cat .commit 2>/dev/null)
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation"
# a fresh install each call: pip --target leaves a warm machine's earlier copy in place
rm -rf /tmp/site /tmp/site_old
$PIP --target /tmp/site .whl/*.whl . || exit 1
[ -d .old ] && $PIP --target /tmp/site_old .old
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$REPO
nvidia-smi --query-gpu=name --format=csv,noheader
G1=$(( $(nvidia-smi -L | wc -l) > 1 ? 1 : 0 ))    # the torch backend's GPU
W=/tmp/learn R=/tmp/res
rm -rf $R; mkdir -p $R    # a warm machine keeps /tmp: only this call's results come back
cd /tmp
python3 -c "from pathlib import Path; from bench.train_step import make_corpus; \
print(make_corpus(Path('$W/data'), 'small'))" 2>&1 | tail -1
train() {  # name gpu backend steps extra-set...
  local name=$1 gpu=$2 backend=$3 steps=$4; shift 4
  rm -rf $W/$name; mkdir -p $W/$name $R/$name    # never an earlier call's run (the corpus stays)
  ln -sfn $W/data $W/$name/data
  CUDA_VISIBLE_DEVICES=$gpu timeout ${TRAIN_S:-540} python3 -m bench.train_step \
    --work-dir $W/$name --backends $backend --steps $steps --baseline-steps $steps \
    --stage2-steps 1 --max-frames 40000 --out $R/$name \
    --set spec_augment=false warmup_steps=300 seed=$SEED "$@" > $R/$name.log 2>&1
  echo "$name rc=$?"
  cp $W/$name/$backend/metrics.csv $R/$name/ 2>/dev/null
}
has() { [[ " ${RUNS:-plain_auto plain_torch five} " == *" $1 "* ]]; }
snapshot() {  # the curves so far, into $OUT: a call cut by its limit still returns them
  for d in $W/*/*/; do
    [ -f $d/metrics.csv ] && mkdir -p $R/$(basename ${d%/*/}) && cp $d/metrics.csv $R/$(basename ${d%/*/})/
  done 2>/dev/null
  tar -czf $OUT/learning.tar.gz.part -C $R . && mv $OUT/learning.tar.gz.part $OUT/learning.tar.gz
}
(while sleep 30; do snapshot; done) &
SNAPSHOTS=$!
disown $SNAPSHOTS     # not one of the jobs `wait` below waits for
for SEED in ${SEEDS:-0}; do   # train reads SEED
  has plain_auto && train plain_auto_s$SEED 0 auto 1600 'model.budgets=[1.0]' &
  has plain_torch && train plain_torch_s$SEED $G1 torch 1600 'model.budgets=[1.0]' &
  has five && train five_auto_s$SEED 0 auto 1300 penalty_warmup=2000 &
  has five && train five_torch_s$SEED $G1 torch 1300 penalty_warmup=2000 &
  has fp32 && train plain_torch_fp32_s$SEED $G1 torch 1600 'model.budgets=[1.0]' bf16=false &
done
if [ -n "${PROBE:-}" ]; then
  FIRST=${SEEDS:-0}; FIRST=${FIRST%% *}
  (cd /tmp && timeout ${TRAIN_S:-540} python3 -m bench.learning_probe --backend torch \
     --steps 600 --check-every 300 --fp64 --attention-check --module-check \
     --work-dir $W/probe seed=$FIRST > $R/probe.log 2>&1
   echo "probe rc=$?") &
fi
T="python3 -m pytest -q -p no:cacheprovider -rf"
if [ -n "${ALL_TESTS:-}" ]; then  # the whole gpu test set, in two halves, one per GPU
  HALF_A="test_launch.py test_gated_attention.py test_gated_mhsa.py test_gated_conv.py"
  (CUDA_VISIBLE_DEVICES=0 timeout 400 $T -m gpu $(printf "$REPO/tests/%s " $HALF_A) \
     > $R/tests_a.log 2>&1; echo "tests a rc=$?") &
  (CUDA_VISIBLE_DEVICES=$G1 timeout 400 $T -m gpu $REPO/tests \
     $(printf -- "--ignore=$REPO/tests/%s " $HALF_A) > $R/tests_b.log 2>&1; echo "tests b rc=$?") &
elif [ -n "${TESTS_K:-}" ]; then  # only the gpu tests whose names match TESTS_K (pytest -k)
  (CUDA_VISIBLE_DEVICES=$G1 timeout 300 $T -m gpu $REPO/tests -k "$TESTS_K" \
     > $R/tests_k.log 2>&1; echo "tests -k rc=$?") &
else
  [ -d .old ] && (CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site_old:$REPO timeout 300 $T -m gpu \
     $REPO/tests/test_learning.py > $R/tests_old.log 2>&1; echo "tests on .old rc=$?") &
  (CUDA_VISIBLE_DEVICES=$G1 timeout 300 $T -m gpu $REPO/tests/test_learning.py \
     > $R/tests_new.log 2>&1; echo "new tests rc=$?") &
fi
wait
kill $SNAPSHOTS
for f in $R/tests_*.log; do
  echo "$f: $(grep -E "passed|failed" $f | tail -1)"; grep -E "^FAILED|^ERROR" $f | cut -c1-200
done
grep -h -E "loss_start|loss_end|\"steps\"|left_plateau|provider" $R/*/train_step.json \
  | paste - - - - - | head
[ -f $R/probe.log ] && grep -E "^step|^attention|!!" $R/probe.log | cut -c1-300
tar -czf $OUT/learning.tar.gz -C $R .
