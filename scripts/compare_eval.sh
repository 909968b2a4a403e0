#!/usr/bin/env bash
# Score each finished run of scripts/compare.sh (its best.pt, chosen on FracAtlas validation AUROC) on the
# validation splits of both data sets, for the CIs and the with/without-multiregion columns of
# scripts/compare_table.py. The test split is never read.
# usage: scripts/compare_eval.sh FRACATLAS_DIR MULTIREGION_DIR [RUN_DIR ...]
set -u
fa=${1:?fracatlas dir}; mr=${2:?multiregion dir}; shift 2
export OMP_WAIT_POLICY=PASSIVE
runs=("$@"); [ ${#runs[@]} -eq 0 ] && runs=(runs/compare/*/ runs/final-mnv3-320)
for run in "${runs[@]}"; do
  run=${run%/}
  [ -f "$run/summary.json" ] || { echo "skip $run (unfinished)"; continue; }
  for data in "$fa" "$mr"; do
    name=$(basename "$data")
    [ -f "$run/eval-val-$name/metrics.json" ] && continue
    python -m model.evaluate --model "$run/best.pt" --data "$data" --split val --out "$run/eval-val-$name" \
      > "$run/eval-val-$name.log" 2>&1 && echo "scored $run on $name val" || echo "FAILED $run $name"
  done
done
