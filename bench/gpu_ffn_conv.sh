# One device call for the FFN/conv helper: GPU tests then benchmarks (rows also to $OUT).
set -x
export ORTHOASR_COMMIT=$(cat .commit 2>/dev/null)   # rows name it (bench/harness.py)
# the repo root is first on sys.path: map orthoasr.kernels onto kernels/ as setup.py does
[ -e orthoasr/kernels ] || ln -s ../kernels orthoasr/kernels
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 170 python3 -m pytest -q -m gpu tests/test_gated_ffn.py tests/test_gated_conv.py -p no:cacheprovider 2>&1 | tail -25
export OUT
timeout 200 python3 -m bench.bench_modules_ffn_conv --sweep 2>&1 | tail -150
ls $OUT
