#!/usr/bin/env bash
# Regenerate the committed reports under assets/ from the shipped model. The evaluations take a few
# minutes on 2 cores; the X-ray check, Grad-CAM and benchmark steps 10-20 minutes more; refitting the
# calibration and the X-ray gate (the files the app loads) only with --refit.
# The screens (hours) are separate: scripts/screen_pretrained.sh (the shipped model's), compare.sh
# (random initialisation), compare_eval.sh, compare_table.py. training_curves.png / training_log.csv
# are the shipped run's curves.png / log.csv.
# usage: scripts/make_reports.sh [FRACATLAS_DIR] [MULTIREGION_DIR] [--refit]
set -euo pipefail
fa=${1:-../shared/data/fracatlas}; mr=${2:-../shared/data/multiregion}; refit=${3:-}
m=assets/model.pt
if [ "$refit" = "--refit" ]; then
  python -m model.calibrate fit --model $m --data "$fa" --split val
  python -m model.xray.fit --model $m --data "$fa" --data "$mr" --out assets/xray_check.npz
  # the site workflow, demonstrated with the second data set as "the site"
  python -m model.calibrate fit --model $m --data "$mr" --split val \
    --out assets/report/site_calibration/multiregion_calibration.json --plots assets/report/site_calibration
fi
python -m model.evaluate --model $m --data "$fa" --split val  --out assets/report/val
python -m model.evaluate --model $m --data "$fa" --split test --out assets/report/test
python -m model.evaluate --model $m --data "$mr" --split test --out assets/report/multiregion_test
python -m model.calibrate report --model $m --data "$fa" --split test --out assets/report/calibration
python -m model.calibrate report --model $m --data "$mr" --split test \
  --calibration assets/report/site_calibration/multiregion_calibration.json --out assets/report/site_calibration/multiregion_test
python -m model.calibrate report --model $m --data "$mr" --split test \
  --out assets/report/site_calibration/multiregion_test_fracatlas_calibration
python -m scripts.eval_robustness --split test --data "$fa" --data "$mr" --limit 200 --bootstrap 300
python -m scripts.compare_calibrators --model $m --data "$fa"
python -m scripts.dev_xray_check --model $m --data "$fa" --data "$mr"
python -m scripts.eval_xray_check --model $m --xray-check assets/xray_check.npz --data "$fa" --data "$mr" \
  --out assets/report/xray_check
python -m scripts.eval_cam --model $m --data "$fa" --out assets/report/cam
python -m scripts.bench_infer --threads 1 --out assets/report/inference_benchmark.json
python -m scripts.bench_app
