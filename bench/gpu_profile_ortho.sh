#!/usr/bin/env bash
# Device call: OrthoSoftmax per-kernel timings by variant, then an Nsight Compute summary.
set -uo pipefail
REPO=$PWD
export ORTHOASR_COMMIT=$(cat .commit 2>/dev/null)   # rows name it (bench/harness.py)
rm -rf /tmp/site_lead && python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site_lead . || exit 1
export PYTHONPATH=/tmp/site_lead:$REPO PYTHONUNBUFFERED=1
cd /tmp
python3 -m bench.profile_ortho_softmax 2>&1 | tee $OUT/profile.log
ncu --kernel-name regex:ortho_softmax --launch-skip 2 --launch-count 2 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
    python3 -c "
import torch, orthoasr
costs, rest, total = orthoasr.unit_costs(orthoasr.SupernetConfig(), 'params')
s = torch.randn(180, 180, device='cuda', requires_grad=True)
for _ in range(3):
    out = orthoasr.ortho_softmax(s, costs.float().cuda(), rest, total, (0.3, 0.5, 0.7, 0.85, 1.0), 0.5, validate=False)
    (out.masks.sum() + out.penalty.sum()).backward()
torch.cuda.synchronize()
" > $OUT/ncu.txt 2>&1; grep -E "ortho_softmax|Duration|Registers|Shared Memory Config|Achieved Occupancy|Stall|Warp Cycles Per Issued|Block Size|Grid Size" $OUT/ncu.txt | head -60
