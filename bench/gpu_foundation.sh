#!/usr/bin/env bash
# One device call for the foundation: install, GPU tests of OrthoSoftmax, its benchmark and
# per-kernel variant timings. Runs from /tmp so that the installed package (which has
# orthoasr.kernels) is imported rather than the checkout's orthoasr/ folder.
set -uo pipefail
REPO=$PWD
export ORTHOASR_COMMIT=$(cat .commit 2>/dev/null)   # rows name it (bench/harness.py)
rm -rf /tmp/site_lead && python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site_lead . || exit 1
export PYTHONPATH=/tmp/site_lead:$REPO PYTHONUNBUFFERED=1
cd /tmp
nvidia-smi --query-gpu=name --format=csv
python3 -m pytest -q -p no:cacheprovider $REPO/tests/test_ortho_softmax.py $REPO/tests/test_units.py 2>&1 | tee $OUT/gpu_tests_foundation.log | tail -4
[ -n "${PROFILE:-}" ] && python3 -m bench.profile_ortho_softmax 2>&1 | tee $OUT/profile.log
python3 -m bench.bench_ortho_softmax 2>&1 | tee $OUT/bench_ortho.log
cp $REPO/bench/results/ortho_softmax.json $OUT/
