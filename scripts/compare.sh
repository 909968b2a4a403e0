#!/usr/bin/env bash
# Equal-budget architecture screen on the grouped FracAtlas split: every row trains 6 epochs (cosine
# schedule over 6) from random initialisation and is judged on validation AUROC; the test split is
# never read. Rows run one after another (2 threads, passive OpenMP waiting so a busy core does not
# stall them) and resume where they stopped. The shipped model's full 16-epoch run is listed apart.
# usage: scripts/compare.sh FRACATLAS_DIR MULTIREGION_DIR [OUT_DIR] [EPOCHS]
set -u
fa=${1:?fracatlas dir}; mr=${2:?multiregion dir}; out=${3:-runs/compare}; epochs=${4:-6}
mkdir -p "$out"
base=(--workers 0 --weights none --loc-weight 0 --lr 2e-3)
. "$(dirname "$0")/screen_rows.sh"
# the seeds' recipe: small plain CNN, 150 px, Adam (no weight decay) + BCE
run seedcnn-150 --data "$fa" --arch seedcnn --img-size 150 --lr 1e-3 --weight-decay 0
run mobilenet_v3_large-224 --data "$fa" --arch mobilenet_v3_large --img-size 224
run resnet18-224 --data "$fa" --arch resnet18 --img-size 224
run mobilenet_v3_large-224-multiregion --data "$fa" --data "$mr" --arch mobilenet_v3_large --img-size 224
run mobilenet_v3_large-320 --data "$fa" --arch mobilenet_v3_large --img-size 320
run efficientnet_b0-224 --data "$fa" --arch efficientnet_b0 --img-size 224
