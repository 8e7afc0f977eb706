#!/usr/bin/env bash
# The GPU check's launcher, on the GPU machine, from the repo root (benchmarks/gpu_check.py
# says what it runs):
#     bash benchmarks/gpu_check.sh [STAGE] [OUT] [run options ...]
# STAGE: the folder `python benchmarks/gpu_check.py prepare` wrote (default .gpu_stage);
# OUT: where the results go (default $OUT, else gpu_check_out). The stage's wheels are
# installed into a folder of their own (nothing of the machine's Python is changed).
set -euo pipefail
stage=${1:-.gpu_stage}
out=${2:-${OUT:-gpu_check_out}}
shift $(( $# < 2 ? $# : 2 ))
if [ ! -f "$stage/manifest.json" ]; then
    echo "gpu_check.sh: no stage in $stage (python benchmarks/gpu_check.py prepare --root <MTD>)" >&2
    exit 2
fi
site=${TMPDIR:-/tmp}/fedad-gpu-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$stage"/wheels/*.whl
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 benchmarks/gpu_check.py run --data "$stage/mtd" --out "$out" "$@"
