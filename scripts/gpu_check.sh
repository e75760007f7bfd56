#!/usr/bin/env bash
# The GPU check of issue 11, for the device machine (at most ~8 minutes on one GPU):
#   run from the repository root with `.whl` (grpcio-health-checking), `.shoal/profiles/{hub,edge-a,edge-b}` and
#   `.shoal/profiles/<deit family>` (the default devices profiled for deit_small_patch16_224)
#   carried; writes $OUT/gpu_check.json. Here (no GPU): `scripts/gpu_check.py --skip-cuda --out DIR`.
set -uo pipefail
OUT=${OUT:-/tmp/shoal-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=src
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
python3 scripts/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
python3 -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -5 > "$OUT/pytest_cuda.txt"
cat "$OUT/pytest_cuda.txt"
