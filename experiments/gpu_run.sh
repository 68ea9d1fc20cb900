#!/usr/bin/env bash
# Issue 17's experiment on the device machine (configs/experiment.yaml). Carry .whl (eSpeak
# NG for the corpus) and .commit (rows name it). The jobs spread over the machine's GPUs.
#   PHASE=all  (2 GPUs: nvidia-h200-x2) every arm in one call: the four supernet arms and the
#              four shrunk plain models side by side, then the individually trained subnets
#   PHASE=1    (one GPU) the supernet arms and the shrunk models. $OUT: results.json, the
#              heatmaps, arm 1's frozen_masks.pt, run.log. Copy results.json and
#              frozen_masks.pt into .exp/ (ignored) and carry it to the next call
#   PHASE=2    the individually trained subnets from .exp/frozen_masks.pt and, beside them,
#              arm 1 once more with the same config (the noise between reruns); the rows are
#              appended to .exp/results.json in $OUT/results.json
#   PHASE=rerun  arm 1 once more, appended to .exp/results.json
#   PHASE=clamped  the OrthoSoftmax arms with clamp_masks, appended to .exp/results.json
#   PHASE=variants  arm 1 once per variant in $VARIANTS ("TAG:KEY=VALUE,..." each, side by
#              side), rows named orthosoftmax-flops-component+TAG, appended likewise
# EXP_SET: more overrides, e.g. "stage1_steps=1000 stage2_steps=500"; LIMIT_S: the run's
# time limit (default 480 s: a call has 600, install and synthesis take about 60)
set -uo pipefail
REPO=$PWD
export ORTHOASR_COMMIT=$(cat .commit 2>/dev/null) PYTHONUNBUFFERED=1
rm -rf /tmp/site_exp && python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-build-isolation --target /tmp/site_exp .whl/*.whl . || exit 1
# run from outside the repo: its orthoasr/ lacks the kernels that the install maps in
export PYTHONPATH=/tmp/site_exp:$REPO
cd /tmp
WORK=/tmp/exp
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
if [ ! -f $WORK/data/summary.json ]; then
  # no summary.json: at most an interrupted synthesis is there, replaced
  python3 -m orthoasr synth --preset base --out $WORK/data --overwrite > $OUT/synth.log 2>&1 \
    || exit 2
fi
SET="train_manifest=$WORK/data/train.jsonl dev_manifest=$WORK/data/dev.jsonl \
  test_manifest=$WORK/data/test.jsonl ${EXP_SET:-}"
RUN="timeout -s KILL ${LIMIT_S:-480} python3 -m experiments.run --config $REPO/configs/experiment.yaml \
  --budgets 0.4 0.55 0.7 0.85 1.0"
FIRST_PHASE="orthosoftmax-flops-component orthosoftmax-params-component \
  orthosoftmax-flops-module simple-topk-flops-component shrunk"
# append_rows FILE...: the rows of each FILE that exists, after those of $OUT/results.json
append_rows() {
  python3 - "$OUT/results.json" "$@" <<'EOF'
import json, pathlib, sys
out, *parts = map(pathlib.Path, sys.argv[1:])
rows = json.loads(out.read_text()) + [r for p in parts if p.exists()
                                      for r in json.loads(p.read_text())]
out.write_text(json.dumps(rows, indent=1) + "\n")
EOF
}
case ${PHASE:-1} in
  all)
    $RUN --arms $FIRST_PHASE individual-flops-component --parallel 8 --work-dir $WORK/runs \
      --out $OUT/results.json --set $SET > $OUT/run.log 2>&1
    echo "all phases rc=$?"
    cp $WORK/runs/orthosoftmax-flops-component/frozen_masks.pt $OUT/ 2>/dev/null
    ;;
  clamped)
    # the OrthoSoftmax arms again with their soft masks clamped to <= 1 (clamp_masks)
    cp $REPO/.exp/results.json $OUT/results.json || exit 3
    $RUN --arms orthosoftmax-flops-component-clamped orthosoftmax-params-component-clamped \
      orthosoftmax-flops-module-clamped --parallel 3 --work-dir $WORK/clamped \
      --out $OUT/results.json --set $SET > $OUT/run.log 2>&1
    echo "clamped rc=$?"
    ;;
  variants)
    # arm 1 once per variant, side by side, the GPUs taken in turn: VARIANTS="TAG:KEY=VALUE,..."
    # (space-separated), e.g. "l2sqrt:penalty_norm=l2_sqrt tau03:tau_end=0.3"
    GPUS=$(nvidia-smi -L | wc -l); i=0; PARTS=""
    for variant in ${VARIANTS:?VARIANTS="TAG:KEY=VALUE,... ..."}; do
      tag=${variant%%:*}; settings=${variant#*:}
      CUDA_VISIBLE_DEVICES=$((i % GPUS)) $RUN --arms orthosoftmax-flops-component --tag $tag \
        --work-dir $WORK/$tag --out $WORK/$tag.json --set $SET ${settings//,/ } \
        > $OUT/$tag.log 2>&1 &
      i=$((i + 1)); PARTS="$PARTS $WORK/$tag.json"
    done
    wait; echo "variants done"
    cp $REPO/.exp/results.json $OUT/results.json 2>/dev/null || echo "[]" > $OUT/results.json
    append_rows $PARTS
    cp $WORK/heatmap-*+*.png $OUT/ 2>/dev/null
    ;;
  rerun)
    cp $REPO/.exp/results.json $OUT/results.json || exit 3
    $RUN --arms orthosoftmax-flops-component --work-dir $WORK/rerun \
      --out $OUT/results.json --set $SET > $OUT/rerun.log 2>&1
    echo "rerun rc=$?"
    ;;
  1)
    $RUN --arms $FIRST_PHASE --parallel 8 --work-dir $WORK/runs --out $OUT/results.json \
      --set $SET > $OUT/run.log 2>&1
    echo "phase 1 rc=$?"
    cp $WORK/runs/orthosoftmax-flops-component/frozen_masks.pt $OUT/ 2>/dev/null
    ;;
  2)
    cp $REPO/.exp/results.json $OUT/results.json || exit 3
    $RUN --arms individual-flops-component --parallel 4 --first-masks $REPO/.exp/frozen_masks.pt \
      --work-dir $WORK/alone --out $OUT/results.json --set $SET > $OUT/run.log 2>&1 &
    ALONE=$!
    $RUN --arms orthosoftmax-flops-component --work-dir $WORK/rerun \
      --out $WORK/rerun.json --set $SET > $OUT/rerun.log 2>&1
    echo "rerun rc=$?"
    wait $ALONE; echo "phase 2 rc=$?"
    append_rows $WORK/rerun.json
    ;;
esac
grep -E "budget .* WER test|Error|error" $OUT/*.log | tail -30
