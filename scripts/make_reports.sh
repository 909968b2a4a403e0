#!/usr/bin/env bash
# Regenerate every committed report under assets/ from the shipped model (a few minutes on 2 cores).
# usage: scripts/make_reports.sh [FRACATLAS_DIR] [MULTIREGION_DIR]
set -euo pipefail
fa=${1:-../shared/data/fracatlas}; mr=${2:-../shared/data/multiregion}
m=assets/model.pt
python -m model.evaluate --model $m --data "$fa" --split val  --out assets/report/val
python -m model.evaluate --model $m --data "$fa" --split test --out assets/report/test
python -m model.evaluate --model $m --data "$mr" --split test --out assets/report/multiregion_test
