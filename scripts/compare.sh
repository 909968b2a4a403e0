#!/usr/bin/env bash
# Short-budget architecture screen on the grouped FracAtlas split (validation AUROC only; the test
# split is never read). Runs one after the other, one CPU thread, after the shipped model's run.
# usage: scripts/compare.sh FRACATLAS_DIR MULTIREGION_DIR [OUT_DIR]
set -u
fa=${1:?fracatlas dir}; mr=${2:?multiregion dir}; out=${3:-runs/compare}
mkdir -p "$out"
run() {
  local tag=$1; shift
  [ -f "$out/$tag/summary.json" ] && { echo "skip $tag (done)"; return; }
  local extra=(); [ -f "$out/$tag/last.ckpt" ] && extra=(--resume)
  nice -n 15 python -m model.train --threads 1 --workers 0 --out "$out/$tag" "$@" "${extra[@]}" \
    > "$out/$tag.log" 2>&1 && echo "done $tag" || echo "FAILED $tag"
}
run mobilenet_v3_large-224 --data "$fa" --arch mobilenet_v3_large --img-size 224 --epochs 2
run efficientnet_b0-224 --data "$fa" --arch efficientnet_b0 --img-size 224 --epochs 2
run seedcnn-150 --data "$fa" --arch seedcnn --img-size 150 --epochs 2 --lr 1e-3
run mobilenet_v3_large-224-multiregion --data "$fa" --data "$mr" --arch mobilenet_v3_large --img-size 224 --epochs 2
