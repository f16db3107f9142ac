#!/usr/bin/env bash
# Every check that needs a GPU, in one run whose outputs land in $OUT: the meters' benchmark on CUDA, and the full
# profile's model trained and measured on the synthetic scenes and on CamVid (AMP on; ImageNet weights only if the
# machine can reach them or has them cached, otherwise random initialisation, which the report says).
#
# Prepare on the CPU machine (CamVid's 180 MB of PNGs shrink to fit the 64 MiB a GPU run may carry; .gitignore has it):
#     python data_scripts/compact_camvid.py --src ../shared/data/camvid --dest .camvid_compact
# Then run this script there with `.camvid_compact` carried. ITERS (default: the profile's) shortens training to fit a
# short lease; the report prints the steps actually used.
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 SEGCAL_PROFILE="${SEGCAL_PROFILE:-full}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export SEGCAL_CACHE="${SEGCAL_CACHE:-/tmp/segcal-cache}"
[ -d .camvid_compact ] && export SEGCAL_CAMVID="$PWD/.camvid_compact"
OUT="${OUT:-/tmp/segcal-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
iters=()
[ -n "${ITERS:-}" ] && iters=(--iters "$ITERS")
datasets=(synthetic)
[ -n "${SEGCAL_CAMVID:-}" ] && datasets+=(camvid)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__,
             torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
} 2>&1 | tee "$OUT/machine.txt"
# Meters at the recorded H200 workloads (anchors.md), the compiled naive histogram beside them (its warm-up in the
# "first call s" column), exactness after 10^9 pixels and calibrator fit times. BENCH_ARGS replaces the sizes, e.g.
# for a dry run on a CPU: OUT=/tmp/o SKIP_MODELS=1 BENCH_ARGS="--size tiny --exact-pixels 3e5" bash benchmarks/gpu_checks.sh
read -r -a bench_args <<< "${BENCH_ARGS:---size anchors --exact-pixels 4.2e6 1.7e8 1e9}"
"$PY" -m segcal_lib.bench "${bench_args[@]}" --compile --fits 2>&1 | tee "$OUT/bench.txt"
[ -n "${SKIP_MODELS:-}" ] && exit 0
"$PY" benchmarks/model_report.py --datasets "${datasets[@]}" "${iters[@]}" --json "$OUT/model_report.json" 2>&1 \
    | grep -v '^\s*$' | tee "$OUT/model_report.txt"
