"""Turn a training run's best.pt into the shipped model file.

    python -m scripts.ship_model runs/screen/lite0-320-box --out assets/model.pt
    python -m scripts.ship_model assets/model.pt --straighten --window --out assets/model.pt   # serving choices only

Reads the run's log.csv at its best epoch (by the validation AUROC the run chose on: the mean over its
data sets when it logged one, else the first data set's) and switches horizontal-flip test-time
augmentation on in the model file's metadata (ModelMeta.tta) only if it raised the VALIDATION AUROC at
that epoch (a run that trains with all eight poses and reads images in their canonical pose logs no
flip TTA, so it stays off); records the run's training minutes (for a fine-tune, model.train
--init-from, its parent's too). --cam-layer sets the Grad-CAM layer (choose it on validation first:
python -m scripts.choose_cam_layer --model RUN/best.pt). The weights are copied unchanged (fp16). The
test split is not read. Afterwards refit what depends on the model file's hash: scripts/make_reports.sh
--refit.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch

from model.common import DEFAULT_MODEL, command_parser
from model.network import ModelMeta
from model.train import parent_lineage


def serving_choices(meta: ModelMeta, args) -> ModelMeta:
    """The choices made on validation that --straighten, --window and --cam-layer record (the Predictor refuses
    to start if the layer does not exist); what the flags leave out stays as the file had it."""
    return meta.replace(straighten=args.straighten or meta.straighten, window=args.window or meta.window,
                        cam_layer=args.cam_layer or meta.cam_layer)


def main(argv=None) -> dict:
    ap = command_parser(__spec__, __doc__)
    ap.add_argument("run", help="training run folder (best.pt, log.csv), or a model file (e.g. assets/model.pt) "
                                "whose serving choices alone (--straighten, --window, --cam-layer) are to change")
    ap.add_argument("--out", default=str(DEFAULT_MODEL))
    ap.add_argument("--straighten", action="store_true",
                    help="record that films on a black canvas are straightened and cropped before analysis "
                         "(model/pose.py; choose it on validation: scripts.eval_robustness --split val --straighten)")
    ap.add_argument("--window", action="store_true",
                    help="record that each film's grey levels are stretched over the full range before analysis "
                         "(model.preprocess.window_levels; choose it on validation: scripts.eval_robustness "
                         "--split val --window)")
    ap.add_argument("--cam-layer", default=None, help="Grad-CAM layer to record (default: the run's)")
    args = ap.parse_args(argv)
    run = Path(args.run)
    if run.is_file():  # the same weights, other serving choices
        blob = torch.load(run, map_location="cpu", weights_only=True)
        meta = ModelMeta.from_dict(blob["meta"])
        meta = serving_choices(meta, args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save({**blob, "meta": meta.to_dict()}, args.out)
        out = {"out": args.out, "from": str(run), "straighten": meta.straighten, "window": meta.window,
               "cam_layer": meta.cam_layer}
        print(json.dumps(out, indent=2))
        return out
    rows = list(csv.DictReader(open(run / "log.csv")))
    key = "val_auroc_mean" if rows and rows[0].get("val_auroc_mean") else "val_auroc"
    best = max(rows, key=lambda r: float(r[key]))
    blob = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    meta = ModelMeta.from_dict(blob["meta"])
    if int(meta.val_metrics["epoch"]) != int(best["epoch"]):
        raise SystemExit(f"{run}/best.pt is from epoch {meta.val_metrics['epoch']}, "
                         f"log.csv's best is {best['epoch']}")
    plain, tta = float(best["val_auroc"]), float(best.get("val_auroc_tta") or 0.0)
    minutes = round(sum(float(r["seconds"]) for r in rows) / 60, 1)
    lineage = {}
    parent = parent_lineage(run)
    if parent:  # a fine-tune (model.train --init-from): the network's training includes its parent's
        lineage = {"fine_tuned_from": parent, "train_minutes_total": round(parent["train_minutes"] + minutes, 1)}
    meta = serving_choices(meta, args).replace(
        tta=tta > plain,
        val_metrics={**meta.val_metrics, "auroc_tta": tta,
                     "tta_rule": "flip TTA on iff it raised the validation AUROC at the best epoch"},
        training={**meta.training, "train_minutes": minutes, "epochs_run": len(rows), **lineage})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({**blob, "meta": meta.to_dict()}, args.out)
    out = {"out": args.out, "epoch": int(best["epoch"]), "val_auroc": plain, "val_auroc_tta": tta,
           "tta": meta.tta, "size_mb": round(Path(args.out).stat().st_size / 1e6, 2), "train_minutes": minutes,
           **lineage}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
