#!/usr/bin/env bash
# Chapters 4-7 (what drives miscalibration) in the full profile on a GPU, executed notebooks and timings saved in $OUT.
#
# Trains every model of the four chapters (FACTOR_SETTINGS["full"] in segcal_lib/analysis/factors.py: seven models
# from 0.3 M to 22 M parameters and one model at four crops, three seeds each) on the synthetic scenes, and on CamVid
# when a copy is there (prepare it as benchmarks/gpu_checks.sh says: `.camvid_compact`, carried along).
#
# DRY_RUN=1 runs the same chapters with tiny factor settings (see benchmarks/run_chapters.py) to check the wiring on
# a CPU in a few minutes; its numbers mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 SEGCAL_PROFILE="${SEGCAL_PROFILE:-full}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export SEGCAL_CACHE="${SEGCAL_CACHE:-/tmp/segcal-cache}"
[ -d .camvid_compact ] && export SEGCAL_CAMVID="$PWD/.camvid_compact"
OUT="${OUT:-/tmp/segcal-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
datasets=(synthetic)
{ [ -n "${SEGCAL_CAMVID:-}" ] || [ -d ../shared/data/camvid ]; } && datasets+=(camvid)
dry=()
[ "${DRY_RUN:-0}" = 1 ] && dry=(--dry-run)

"$PY" -c "import segcal_lib; print(segcal_lib.describe())" | tee "$OUT/machine.txt"
status=0
for ds in "${datasets[@]}"; do
    "$PY" benchmarks/run_chapters.py chapters/04_capacity.ipynb chapters/05_crop_size.ipynb \
        chapters/06_multiscale_testing.ipynb chapters/07_prediction_correctness.ipynb \
        --dataset "$ds" --out "$OUT" "${dry[@]}" 2>&1 | tee "$OUT/run-$ds.txt" || status=1
done
ls -l "$OUT"
exit $status
